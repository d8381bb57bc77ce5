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
from typing import Any

import torch

from core.errors import DiffshipError
from exporter.vocab import write_clip_tokenizer

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""Trained models that ship with diffship (diffusers ``save_pretrained`` folders)."""
DEFAULT_SEED = 0


class SourceError(DiffshipError):
    """The requested model cannot be loaded; the message says what to do instead."""


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

DIFFUSERS_PIPELINES = {"txt2img": "StableDiffusionPipeline", "img2img": "StableDiffusionImg2ImgPipeline",
                       "inpaint": "StableDiffusionInpaintPipeline"}
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                       "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
"""diffusers folders of these classes hold the same components (an inpainting model's UNet takes 9 channels); an SDXL
folder adds ``text_encoder_2`` and ``tokenizer_2``, and an SDXL refiner's has no ``text_encoder``/``tokenizer``."""
XL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
XL_FAMILIES = ("sdxl", "sdxl-refiner")

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
    text_encoder: Any
    """None for the SDXL refiner (it has the second text encoder only)."""
    unet: Any
    vae: Any
    tokenizer_dir: Path | None
    scheduler_config_path: Path
    info: dict[str, Any]
    text_encoder_2: Any = None
    """SDXL's second text encoder (``CLIPTextModelWithProjection``); None for one-encoder families."""
    tokenizer_2_dir: Path | None = None
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    """Pipeline-level settings from ``model_index.json`` (SDXL: ``force_zeros_for_empty_prompt``)."""
    _scratch: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    def modules(self) -> dict[str, torch.nn.Module]:
        # This order is hashed into weights_sha256 (and so into every package's export key): packages exported
        # before the refiner existed must keep matching their rebuilt source.
        ordered = {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae,
                   "text_encoder_2": self.text_encoder_2}
        return {name: module for name, module in ordered.items() if module is not None}

    def weights_sha256(self) -> str:
        """Digest of every parameter and buffer (name, dtype, shape, bytes) of the models, taken in the order
        text_encoder, unet, vae, text_encoder_2 (those present), each state dict sorted by name."""
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

    def diffusers_pipeline(self, task: str = "txt2img") -> Any:
        """The reference diffusers pipeline over these very modules (for parity and benchmarks): text-to-image,
        ``img2img`` (StableDiffusionImg2ImgPipeline) or ``inpaint`` (StableDiffusionInpaintPipeline)."""
        import diffusers
        from transformers import CLIPTokenizer

        config = self.scheduler_config()
        scheduler_class = getattr(diffusers, config.get("_class_name", ""), None)
        if scheduler_class is None:
            raise SourceError(f"{self.scheduler_config_path} names no diffusers scheduler class")
        if self.family in XL_FAMILIES:
            refiner = self.family == "sdxl-refiner"
            if task == "inpaint" or (refiner and task == "txt2img"):
                raise SourceError(f"no {task} reference for {self.family} packages (SDXL: text-to-image and "
                                  "image-to-image; the refiner: image-to-image)")
            assert self.tokenizer_2_dir is not None
            parts = {
                "vae": self.vae, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2,
                "tokenizer": CLIPTokenizer.from_pretrained(str(self.tokenizer_dir)) if self.tokenizer_dir else None,
                "tokenizer_2": CLIPTokenizer.from_pretrained(str(self.tokenizer_2_dir)), "unet": self.unet,
                "scheduler": scheduler_class.from_config(config), "add_watermarker": False,
                "force_zeros_for_empty_prompt": bool(self.pipeline_options.get("force_zeros_for_empty_prompt", True)),
            }
            if task == "txt2img":
                return diffusers.StableDiffusionXLPipeline(**parts)
            return diffusers.StableDiffusionXLImg2ImgPipeline(**parts, requires_aesthetics_score=refiner)
        pipeline_class = getattr(diffusers, DIFFUSERS_PIPELINES[task])
        return pipeline_class(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=CLIPTokenizer.from_pretrained(str(self.tokenizer_dir)),
            unet=self.unet,
            scheduler=scheduler_class.from_config(config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def check_source_arguments(model: str | None, model_path: str | os.PathLike[str] | None, random_weights: bool) -> None:
    """Reject impossible combinations before anything slow happens."""
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
) -> SourceModels:
    """Resolve ``--model``/``--model-path``/``--random-weights`` into torch modules (float32, eval mode)."""
    check_source_arguments(model, model_path, random_weights)
    if model_path is not None:
        return _load_diffusers_dir(Path(model_path), {"kind": "path", "path": str(Path(model_path).resolve())})
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
    if kind == "path":
        return load_source(model_path=info["path"])
    if kind in ("tiny", "random"):
        return load_source(model=info["model"], random_weights=kind == "random", seed=info.get("seed", DEFAULT_SEED))
    if kind in ("hub", "bundled"):
        return load_source(model=info["model"])
    raise SourceError(f"cannot rebuild a source of kind {kind!r}")


def _read_config(preset: str, name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / preset / f"{name}.json").read_text(encoding="utf-8"))


def _build_from_configs(preset: ModelPreset, seed: int) -> SourceModels:
    """The preset's architecture with seeded random weights: the same seed gives the same bytes every time."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    log.info("building %s from committed configs with random weights (seed %d)", preset.name, seed)
    torch.manual_seed(seed)
    # The SDXL refiner has no first text encoder (and no config for one).
    first_encoder = (CONFIG_DIR / preset.name / "text_encoder.json").is_file()
    text_encoder = CLIPTextModel(CLIPTextConfig(**_read_config(preset.name, "text_encoder"))) if first_encoder else None
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel.from_config(_read_config(preset.name, "unet"))
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL.from_config(_read_config(preset.name, "vae"))

    scratch = tempfile.TemporaryDirectory(prefix="diffship-source-")
    tokenizer_dir = write_clip_tokenizer(Path(scratch.name) / "tokenizer", _read_config(preset.name, "tokenizer_config")) \
        if first_encoder else None
    scheduler_path = Path(scratch.name) / "scheduler" / "scheduler_config.json"
    scheduler_path.parent.mkdir()
    shutil.copyfile(CONFIG_DIR / preset.name / "scheduler_config.json", scheduler_path)
    kind = "tiny" if preset.hub_id is None else "random"
    source = SourceModels(
        family=preset.family,
        text_encoder=text_encoder.eval() if text_encoder is not None else None,
        unet=unet.eval(),
        vae=vae.eval(),
        tokenizer_dir=tokenizer_dir,
        scheduler_config_path=scheduler_path,
        info={"kind": kind, "model": preset.name, "seed": seed, "hub_id": preset.hub_id, "random_weights": True},
        _scratch=scratch,
    )
    if preset.family in XL_FAMILIES:
        from transformers import CLIPTextModelWithProjection

        torch.manual_seed(seed + 3)
        source.text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**_read_config(preset.name, "text_encoder_2"))).eval()
        source.tokenizer_2_dir = write_clip_tokenizer(Path(scratch.name) / "tokenizer_2",
                                                      _read_config(preset.name, "tokenizer_2_config"))
        source.pipeline_options = _pipeline_options(_read_config(preset.name, "pipeline"))
    return source


def _pipeline_options(index: dict[str, Any]) -> dict[str, Any]:
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


def _load_diffusers_dir(folder: Path, info: dict[str, Any], family: str | None = None) -> SourceModels:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise SourceError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    pipeline_class = index.get("_class_name", "?")
    if pipeline_class not in SUPPORTED_PIPELINES:
        raise SourceError(
            f"{folder} holds a {pipeline_class}; diffship exports {', '.join(SUPPORTED_PIPELINES)} folders (SD 1.x / 2.x)"
        )
    xl = pipeline_class in XL_PIPELINES
    # An SDXL refiner's folder has no first text encoder (model_index.json names it null).
    first_encoder = not xl or (folder / "text_encoder").is_dir()
    for sub in ("unet", "vae", *(("text_encoder", "tokenizer") if first_encoder else ()), "scheduler",
                *(("text_encoder_2", "tokenizer_2") if xl else ())):
        if not (folder / sub).is_dir():
            raise SourceError(f"{folder} has no {sub}/ folder; it is not a complete {pipeline_class}")

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    try:
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32) \
            if first_encoder else None
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the models in {folder}: {str(exc).splitlines()[0]}") from exc
    text_encoder_2 = None
    if xl:
        from transformers import CLIPTextModelWithProjection

        try:
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2",
                                                                         torch_dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot load the models in {folder}: {str(exc).splitlines()[0]}") from exc
    if family is None:
        family = ("sdxl" if first_encoder else "sdxl-refiner") if xl else \
            "sd2" if unet.config.get("use_linear_projection") else "sd1"
    return SourceModels(
        family=family,
        text_encoder=text_encoder.eval() if text_encoder is not None else None,
        unet=unet.eval(),
        vae=vae.eval(),
        tokenizer_dir=folder / "tokenizer" if first_encoder else None,
        scheduler_config_path=folder / "scheduler" / "scheduler_config.json",
        info=info,
        text_encoder_2=text_encoder_2,
        tokenizer_2_dir=folder / "tokenizer_2" if xl else None,
        pipeline_options=_pipeline_options(index),
    )
