"""Where the torch modules come from: tiny models, full-size presets, the Hugging Face cache/hub, or a local folder.

Every source yields the same ``SourceModels`` (text encoder, UNet, VAE, tokenizer files, scheduler config) and a
JSON-able ``info`` dict that is written into the manifest, so benchmarks and parity reports can rebuild the very
same diffusers pipeline later (``load_source_from_info``) and prove it by the weights digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffship.core.errors import DiffshipError
from diffship.core.families import get_family
from diffship.exporter.vocab import write_clip_tokenizer

if TYPE_CHECKING:
    from diffship.exporter.families.base import FamilyExporter

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""Trained models that ship with diffship (diffusers ``save_pretrained`` folders)."""
DEFAULT_SEED = 0


class SourceError(DiffshipError):
    """The requested model cannot be loaded; the message says what to do instead."""


@dataclass(frozen=True)
class SourceOptions:
    """How to read a ``--model-path`` that is not a plain diffusers folder (docs/design.md, "Single-file
    checkpoints"); every field set is recorded in the manifest's source."""

    vae: Path | None = None
    """A VAE file or folder that replaces the one in the checkpoint or folder."""
    variant: str | None = None
    """A diffusers folder's weight variant (``fp16``: ``*.fp16.safetensors``)."""
    prediction_type: str | None = None
    """``epsilon`` or ``v_prediction`` for a single file (else its sidecar .yaml, else the configs' default)."""
    config: str | None = None
    """Bundled configs (a preset name) a single file is read with, instead of the detected architecture's."""
    allow_pickle: bool = False
    """Read ``.ckpt`` files (with ``torch.load(weights_only=True)``)."""

    def given(self) -> list[str]:
        return [f"--{name.replace('_', '-')}" for name in ("vae", "variant", "prediction_type", "config", "allow_pickle")
                if getattr(self, name) not in (None, False)]


@dataclass(frozen=True)
class ModelPreset:
    name: str
    family: str
    hub_id: str | None
    """None for models that only exist locally (the tiny ones)."""
    description: str
    folder: Path | None = None
    """A bundled diffusers folder (trained weights that ship in the repository), or None."""


PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset("tiny", "sd1", None, "SD 1.x architecture at tiny widths, seeded random weights"),
    "tiny-v": ModelPreset("tiny-v", "sd2", None, "SD 2.x (v-prediction) architecture at tiny widths, seeded random weights"),
    "sd15": ModelPreset("sd15", "sd1", "stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5"),
    "sd21-base": ModelPreset("sd21-base", "sd2", "stabilityai/stable-diffusion-2-1-base", "Stable Diffusion 2.1 base (512px)"),
    "sd21": ModelPreset("sd21", "sd2", "stabilityai/stable-diffusion-2-1", "Stable Diffusion 2.1 (768px, v-prediction)"),
    "shapes": ModelPreset("shapes", "sd1", None,
                          "SD 1.x architecture at tiny widths, trained here to draw coloured shapes (scripts/train_tiny.py)",
                          MODELS_DIR / "shapes"),
    "tiny-inpaint": ModelPreset("tiny-inpaint", "sd1", None,
                                "SD 1.x inpainting architecture (9-channel UNet) at tiny widths, seeded random weights"),
    "sd15-inpaint": ModelPreset("sd15-inpaint", "sd1", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                                "Stable Diffusion 1.5 inpainting (9-channel UNet)"),
    "sd2-inpaint": ModelPreset("sd2-inpaint", "sd2", "stabilityai/stable-diffusion-2-inpainting",
                               "Stable Diffusion 2 inpainting (512px, 9-channel UNet)"),
    "tiny-xl": ModelPreset("tiny-xl", "sdxl", None,
                           "SDXL architecture at tiny widths (two text encoders, text_time UNet), seeded random weights"),
    "tiny-xl-refiner": ModelPreset("tiny-xl-refiner", "sdxl-refiner", None,
                                   "SDXL refiner architecture at tiny widths (second text encoder only, aesthetic-score "
                                   "UNet), seeded random weights"),
    "sdxl": ModelPreset("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "Stable Diffusion XL 1.0 base (1024px)"),
    "sdxl-refiner": ModelPreset("sdxl-refiner", "sdxl-refiner", "stabilityai/stable-diffusion-xl-refiner-1.0",
                                "Stable Diffusion XL 1.0 refiner (image-to-image; the base's hand-off)"),
    "sdxl-turbo": ModelPreset("sdxl-turbo", "sdxl", "stabilityai/sdxl-turbo",
                              "SDXL-Turbo (512px, 1-4 steps, guidance 0; trailing Euler ancestral)"),
    "sd-turbo": ModelPreset("sd-turbo", "sd2", "stabilityai/sd-turbo",
                            "SD-Turbo (SD 2.1 distilled: 512px, 1-4 steps, guidance 0)"),
}

HUB_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer_2/*",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]


@dataclass
class SourceModels:
    family: str
    # diffusers' and transformers' models (typed loosely: their classes are not visible to mypy as nn.Modules).
    text_encoders: dict[str, Any]
    """Text encoder component -> its transformers model, in the order the family joins them (the SDXL refiner has
    only ``text_encoder_2``)."""
    unet: Any
    vae: Any
    tokenizers: dict[str, Path]
    """Text encoder component -> its tokenizer folder."""
    scheduler_config_path: Path
    info: dict[str, Any]
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    """Pipeline-level settings from ``model_index.json`` (SDXL: ``force_zeros_for_empty_prompt``)."""
    _scratch: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    def modules(self) -> dict[str, torch.nn.Module]:
        # This order is hashed into weights_sha256 (and so into every package's export key): packages exported
        # before the refiner existed must keep matching their rebuilt source. Other text encoders follow, by name.
        ordered = {"text_encoder": self.text_encoders.get("text_encoder"), "unet": self.unet, "vae": self.vae,
                   "text_encoder_2": self.text_encoders.get("text_encoder_2"),
                   **{name: module for name, module in sorted(self.text_encoders.items())
                      if name not in ("text_encoder", "text_encoder_2")}}
        return {name: module for name, module in ordered.items() if module is not None}

    def weights_sha256(self) -> str:
        """Digest of every parameter and buffer (name, dtype, shape, bytes) of the models, taken in the order
        text_encoder, unet, vae, text_encoder_2, then any other text encoder by name (those present), each state dict
        sorted by name."""
        if self._digest is None:
            digest = hashlib.sha256()
            for module_name, module in self.modules().items():
                for name, tensor in sorted(module.state_dict().items()):
                    array = tensor.detach().cpu().contiguous().numpy()
                    digest.update(f"{module_name}.{name}:{array.dtype}:{array.shape}".encode())
                    digest.update(memoryview(array).cast("B"))
            self._digest = digest.hexdigest()
        return self._digest

    def scheduler_config(self) -> dict[str, Any]:
        return json.loads(self.scheduler_config_path.read_text(encoding="utf-8"))

    def diffusers_scheduler(self) -> Any:
        """diffusers' scheduler of the class and config the source ships."""
        import diffusers

        config = self.scheduler_config()
        scheduler_class = getattr(diffusers, config.get("_class_name", ""), None)
        if scheduler_class is None:
            raise SourceError(f"{self.scheduler_config_path} names no diffusers scheduler class")
        return scheduler_class.from_config(config)

    def diffusers_pipeline(self, task: str = "txt2img") -> Any:
        """The reference diffusers pipeline over these very modules (for parity and benchmarks): text-to-image,
        ``img2img`` or ``inpaint``, of the family's own pipeline classes."""
        from diffship.exporter.families import family_exporter

        return family_exporter(self.family).reference_pipeline(self, task)

    def release(self, module: str) -> Any:
        """Let go of ``module`` (``unet``, ``vae`` or a text encoder) and return it."""
        if module in self.text_encoders:
            return self.text_encoders.pop(module)
        released = getattr(self, module)
        setattr(self, module, None)
        return released

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def check_source_arguments(model: str | None, model_path: str | os.PathLike[str] | None, random_weights: bool,
                           options: SourceOptions | None = None) -> None:
    """Reject impossible combinations before anything slow happens."""
    given = options.given() if options is not None else []
    if model is not None and given:
        raise SourceError(f"{', '.join(given)} apply to --model-path (a checkpoint file or diffusers folder), not to "
                          "--model presets")
    if model_path is not None and given:
        single = Path(model_path).is_file()
        wrong = [o for o in given if o in (("--variant",) if single else ("--prediction-type", "--config",
                                                                          "--allow-pickle"))]
        if wrong:
            raise SourceError(f"{', '.join(wrong)} apply to {'diffusers folders' if single else 'single-file checkpoints'}"
                              f", and {model_path} is {'a file' if single else 'a folder'}")
    if (model is None) == (model_path is None):
        raise SourceError("give exactly one of --model NAME or --model-path DIR")
    if model_path is not None and random_weights:
        raise SourceError("--random-weights applies to --model presets, not to --model-path")
    if model is not None and model not in PRESETS:
        raise SourceError(f"unknown model {model!r}; choose one of: {', '.join(PRESETS)} (or use --model-path DIR)")
    if model is not None and random_weights and PRESETS[model].folder is not None:
        raise SourceError(f"{model} ships trained weights; --random-weights applies to the other presets")


def load_source(
    model: str | None = None,
    model_path: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    seed: int = DEFAULT_SEED,
    options: SourceOptions | None = None,
) -> SourceModels:
    """Resolve ``--model``/``--model-path``/``--random-weights`` into torch modules (float32, eval mode)."""
    options = options or SourceOptions()
    check_source_arguments(model, model_path, random_weights, options)
    if model_path is not None and Path(model_path).is_file():
        from diffship.exporter.single_file import load_single_file

        return load_single_file(Path(model_path), options)
    if model_path is not None:
        info: dict[str, Any] = {"kind": "path", "path": str(Path(model_path).resolve())}
        if options.variant or options.vae:  # only when set, so that earlier packages keep their export keys
            info["overrides"] = {"variant": options.variant, "vae": str(options.vae.resolve()) if options.vae else None}
        return _load_diffusers_dir(Path(model_path), info, options=options)
    assert model is not None
    preset = PRESETS[model]
    if preset.folder is not None:
        return _load_bundled(preset)
    if preset.hub_id is None or random_weights:
        return _build_from_configs(preset, seed)
    return _load_hub(preset)


def load_source_from_info(info: dict[str, Any]) -> SourceModels:
    """Rebuild the source recorded in a manifest (``manifest.source``)."""
    kind = info.get("kind")
    overrides = info.get("overrides") or {}
    if kind in ("path", "single_file"):
        vae = overrides.get("vae")
        return load_source(model_path=info["path"], options=SourceOptions(
            vae=Path(vae) if vae else None, variant=overrides.get("variant"),
            prediction_type=overrides.get("prediction_type"), config=overrides.get("config"),
            allow_pickle=bool(overrides.get("allow_pickle"))))
    if kind in ("tiny", "random"):
        return load_source(model=info["model"], random_weights=kind == "random", seed=info.get("seed", DEFAULT_SEED))
    if kind in ("hub", "bundled"):
        return load_source(model=info["model"])
    raise SourceError(f"cannot rebuild a source of kind {kind!r}")


def _read_config(preset: str, name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / preset / f"{name}.json").read_text(encoding="utf-8"))


SEED_OFFSETS = {"text_encoder": 0, "unet": 1, "vae": 2}
"""Each random-weight module's seed is the preset's seed plus this (``text_encoder_N``: N + 1), so the same seed gives
the same bytes every time, and a family with another text encoder does not change the others'."""


def seed_offset(module: str) -> int:
    if module in SEED_OFFSETS:
        return SEED_OFFSETS[module]
    return int(module.rpartition("_")[2]) + 1  # text_encoder_2: 3, text_encoder_3: 4, ...


def _build_from_configs(preset: ModelPreset, seed: int) -> SourceModels:
    """The preset's architecture with seeded random weights: the same seed gives the same bytes every time."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from diffship.exporter.families import family_exporter, tokenizer_folder

    log.info("building %s from committed configs with random weights (seed %d)", preset.name, seed)
    exporter = family_exporter(preset.family)
    scratch = tempfile.TemporaryDirectory(prefix="diffship-source-")
    text_encoders, tokenizers = {}, {}
    for component in get_family(preset.family).text_encoders:
        torch.manual_seed(seed + seed_offset(component))
        model_class = _transformers_class(exporter.text_encoder_class(component))
        text_encoders[component] = model_class(CLIPTextConfig(**_read_config(preset.name, component))).eval()
        folder = tokenizer_folder(component)
        tokenizers[component] = write_clip_tokenizer(Path(scratch.name) / folder,
                                                     _read_config(preset.name, f"{folder}_config"))
    torch.manual_seed(seed + seed_offset("unet"))
    unet = UNet2DConditionModel.from_config(_read_config(preset.name, "unet"))
    torch.manual_seed(seed + seed_offset("vae"))
    vae = AutoencoderKL.from_config(_read_config(preset.name, "vae"))
    scheduler_path = Path(scratch.name) / "scheduler" / "scheduler_config.json"
    scheduler_path.parent.mkdir()
    shutil.copyfile(CONFIG_DIR / preset.name / "scheduler_config.json", scheduler_path)
    index = CONFIG_DIR / preset.name / "pipeline.json"
    return SourceModels(
        family=preset.family,
        text_encoders=text_encoders,
        unet=unet.eval(),
        vae=vae.eval(),
        tokenizers=tokenizers,
        scheduler_config_path=scheduler_path,
        info={"kind": "tiny" if preset.hub_id is None else "random", "model": preset.name, "seed": seed,
              "hub_id": preset.hub_id, "random_weights": True},
        pipeline_options=pipeline_options(json.loads(index.read_text(encoding="utf-8"))) if index.is_file() else {},
        _scratch=scratch,
    )


def _transformers_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def pipeline_options(index: dict[str, Any]) -> dict[str, Any]:
    """The settings of a ``model_index.json`` that change what the pipeline computes."""
    return {key: index[key] for key in ("force_zeros_for_empty_prompt", "requires_aesthetics_score") if key in index}


def _load_bundled(preset: ModelPreset) -> SourceModels:
    assert preset.folder is not None
    if not (preset.folder / "model_index.json").is_file():
        raise SourceError(f"{preset.name}'s weights are missing from {preset.folder}; restore them from git "
                          f"(git checkout -- {preset.folder}) or retrain with scripts/train_tiny.py --out {preset.folder}")
    training = preset.folder / "training.json"
    record = json.loads(training.read_text(encoding="utf-8")) if training.is_file() else {}
    info = {"kind": "bundled", "model": preset.name, "path": str(preset.folder), "random_weights": False,
            "trained_weights_sha256": record.get("weights_sha256")}
    return _load_diffusers_dir(preset.folder, info, family=preset.family)


def _load_hub(preset: ModelPreset) -> SourceModels:
    from huggingface_hub import snapshot_download

    assert preset.hub_id is not None
    try:
        folder = snapshot_download(preset.hub_id, allow_patterns=HUB_PATTERNS, local_files_only=True)
        log.info("found %s in the Hugging Face cache: %s", preset.hub_id, folder)
    except Exception:
        try:
            log.info("downloading %s from the Hugging Face hub", preset.hub_id)
            folder = snapshot_download(preset.hub_id, allow_patterns=HUB_PATTERNS)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SourceError(
                f"weights for {preset.name} ({preset.hub_id}) are neither in the Hugging Face cache nor reachable on "
                f"the hub ({reason}); use --model-path DIR for a local diffusers folder, or --random-weights for the "
                "full-size architecture with random weights"
            ) from None
    revision = Path(folder).name
    info = {"kind": "hub", "model": preset.name, "hub_id": preset.hub_id, "revision": revision, "random_weights": False}
    return _load_diffusers_dir(Path(folder), info, family=preset.family)


def _load_diffusers_dir(folder: Path, info: dict[str, Any], family: str | None = None,
                        options: SourceOptions | None = None) -> SourceModels:
    from diffship.exporter.families import tokenizer_folder

    options = options or SourceOptions()
    exporter, index = _pipeline_exporter(folder)
    _require_folders(folder, index, ("unet", "vae", "scheduler"))  # before the family is read from the UNet's config
    family = family or exporter.family_of_folder(folder, index)
    encoders = get_family(family).text_encoders
    _require_folders(folder, index, (*encoders, *(tokenizer_folder(c) for c in encoders)))
    variant = weights_variant(folder, options.variant)
    if variant:
        log.info("loading the %s weights of %s (*.%s.safetensors)", variant, folder, variant)
        info["variant"] = variant

    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        text_encoders = {component: _transformers_class(exporter.text_encoder_class(component)).from_pretrained(
            folder / component, torch_dtype=torch.float32, variant=variant).eval() for component in encoders}
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, variant=variant)
        if options.vae is not None:
            from diffship.exporter.single_file import load_vae

            vae = load_vae(options.vae, folder, options.allow_pickle)
        else:
            vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32, variant=variant)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the models in {folder}: {str(exc).splitlines()[0]}") from exc
    return SourceModels(
        family=family,
        text_encoders=text_encoders,
        unet=unet.eval(),
        vae=vae.eval(),
        tokenizers={component: folder / tokenizer_folder(component) for component in encoders},
        scheduler_config_path=folder / "scheduler" / "scheduler_config.json",
        info=info,
        pipeline_options=pipeline_options(index),
    )


def _require_folders(folder: Path, index: dict[str, Any], subfolders: tuple[str, ...]) -> None:
    for sub in subfolders:
        if not (folder / sub).is_dir():
            raise SourceError(f"{folder} has no {sub}/ folder; it is not a complete {index.get('_class_name')}")


def _pipeline_exporter(folder: Path) -> tuple[FamilyExporter, dict[str, Any]]:
    """The family exporter that loads ``folder`` (by its pipeline class) and its ``model_index.json``."""
    from diffship.exporter.families import exporter_for_pipeline, pipeline_classes

    if not folder.exists():
        raise SourceError(f"{folder} does not exist; give a diffusers pipeline folder (the folder save_pretrained "
                          "writes, with model_index.json)")
    if not folder.is_dir():
        raise SourceError(f"{folder} is a file; give a diffusers pipeline folder (the folder save_pretrained writes, "
                          "with model_index.json)")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise SourceError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{index_path} is not valid JSON ({exc})") from None
    pipeline_class = index.get("_class_name", "?") if isinstance(index, dict) else "?"
    exporter = exporter_for_pipeline(str(pipeline_class))
    if exporter is None:
        raise SourceError(f"{folder} holds a {pipeline_class}; diffship exports {', '.join(pipeline_classes())} "
                          "folders (SD 1.x / 2.x, SDXL)")
    return exporter, index


WEIGHT_STEMS = ("diffusion_pytorch_model", "model")


def weights_variant(folder: Path, variant: str | None) -> str | None:
    """The variant to load a diffusers folder with: ``variant`` when given (checked), none when the UNet has plain
    weights, else the one variant its UNet folder holds (``fp16`` for ``*.fp16.safetensors``)."""
    unet = folder / "unet"
    found = sorted({p.name.split(".")[-2] for p in unet.glob("*.*.safetensors") if p.name.split(".")[0] in WEIGHT_STEMS
                    and not p.name.split(".")[-2].isdigit() and "-of-" not in p.name.split(".")[-2]})
    plain = any((unet / f"{stem}.{ext}").is_file() for stem in WEIGHT_STEMS for ext in ("safetensors", "bin"))
    if variant is not None:
        if variant not in found:
            raise SourceError(f"{unet} has no {variant} weights (no *.{variant}.safetensors); it has "
                              f"{', '.join(found + (['the plain weights'] if plain else [])) or 'no weights'}")
        return variant
    if plain:
        return None
    if len(found) == 1:
        return found[0]
    if found:
        raise SourceError(f"{unet} holds the variants {', '.join(found)} and no plain weights; choose one with "
                          f"--variant (e.g. --variant {found[0]})")
    raise SourceError(f"{unet} has no weights (no diffusion_pytorch_model.safetensors nor a variant such as "
                      "diffusion_pytorch_model.fp16.safetensors, which --variant fp16 would load)")
