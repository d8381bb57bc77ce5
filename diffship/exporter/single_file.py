"""Load a single-file checkpoint (original LDM/SGM layout) through diffusers' own ``from_single_file``, offline.

diffusers needs a diffusers-layout config folder beside the file; diffship writes one into scratch from the configs it
bundles (``exporter/configs/<preset>``, the CLIP vocabulary in ``exporter/data/clip``), so no hub is asked. What the
tensor names cannot decide (epsilon or v-prediction) comes from ``--prediction-type``, else the web UI's sidecar
``.yaml``, else the configs' default; everything chosen is recorded in the manifest's source (docs/design.md,
"Single-file checkpoints").
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffship.core.families import get_family
from diffship.exporter.checkpoint_files import (
    Checkpoint,
    CheckpointError,
    file_sha256,
    inspect_checkpoint,
    read_tensor_names,
    sidecar_parameterization,
)
from diffship.exporter.vocab import write_clip_tokenizer

if TYPE_CHECKING:
    from diffship.exporter.sources import SourceModels, SourceOptions

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction")
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sd1-inpaint": "StableDiffusionInpaintPipeline", "sd2-inpaint": "StableDiffusionInpaintPipeline",
             "sdxl": "StableDiffusionXLPipeline", "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline"}


@dataclass(frozen=True)
class LoadPlan:
    """How a checkpoint will be loaded: which bundled configs, which prediction type and why, which VAE."""

    checkpoint: Checkpoint
    config: str
    prediction_type: str
    prediction_from: str
    vae: Path | None
    allow_pickle: bool = False

    def describe(self) -> str:
        vae = f"; VAE from {self.vae}" if self.vae else ""
        return (f"detected {self.checkpoint.describe()} in {self.checkpoint.path.name}; configs {self.config}; "
                f"prediction type {self.prediction_type} ({self.prediction_from}){vae}")


def plan_load(path: Path, options: SourceOptions) -> LoadPlan:
    """Inspect ``path`` and decide everything before any tensor is read (refusals come from here)."""
    from diffship.exporter.sources import PRESETS

    checkpoint = inspect_checkpoint(path, options.allow_pickle)
    architecture = checkpoint.architecture
    sidecar_type, sidecar = sidecar_parameterization(path)
    if options.prediction_type is not None:
        prediction, origin = options.prediction_type, "--prediction-type"
    elif sidecar_type is not None:
        prediction, origin = sidecar_type, f"from {sidecar.name if sidecar else 'the sidecar'}"
    else:
        prediction, origin = "", ""
    config = options.config or architecture.default_config
    if options.config is None and architecture.name == "sd2" and prediction == "epsilon":
        config = "sd21-base"  # the 512px epsilon model's configs
    preset = PRESETS.get(config)
    unet = _config_json(config, "unet") if preset is not None else None
    if preset is None or unet is None:
        raise CheckpointError(f"--config {config!r} is not a bundled config; choose one of {', '.join(PRESETS)}")
    if preset.family != architecture.family or unet.get("in_channels", 4) != architecture.unet_in_channels:
        raise CheckpointError(f"--config {config} is a {preset.family} model with a {unet.get('in_channels', 4)}-"
                              f"channel UNet, but {path.name} is {architecture.description}; choose matching configs")
    if not checkpoint.fits(unet):
        fitting = [name for name, p in PRESETS.items() if p.family == architecture.family and
                   checkpoint.fits(_config_json(name, "unet") or {}) and
                   (_config_json(name, "unet") or {}).get("in_channels", 4) == architecture.unet_in_channels]
        raise CheckpointError(
            f"{path.name}'s UNet is {checkpoint.unet_width} wide and attends to {checkpoint.context_width}-wide text; the "
            f"{config} configs are {unet['block_out_channels'][0]} and {unet.get('cross_attention_dim')}: "
            + (f"pass --config {fitting[0]}" if fitting else "no bundled configs fit this file"))
    if not prediction:
        scheduler = _config_json(config, "scheduler_config") or {}
        prediction = scheduler.get("prediction_type", "epsilon")
        origin = f"the {config} configs' default; --prediction-type overrides"
    if not checkpoint.has_vae and options.vae is None:
        raise CheckpointError(f"{path} has no VAE (no first_stage_model.* tensors); give one with --vae FILE_OR_FOLDER "
                              "(a VAE .safetensors or a diffusers VAE folder)")
    return LoadPlan(checkpoint, config, prediction, origin, options.vae, options.allow_pickle)


def _config_json(preset: str, name: str) -> dict[str, Any] | None:
    from diffship.exporter.sources import CONFIG_DIR

    path = CONFIG_DIR / preset / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_config_folder(folder: Path, architecture: str, family: str, config: str, prediction_type: str) -> Path:
    """A diffusers pipeline folder without weights (model_index.json, component configs, tokenizers, scheduler): what
    ``from_single_file(config=...)`` reads instead of the hub."""
    from diffship.exporter.families import family_exporter, tokenizer_folder

    exporter = family_exporter(family)
    index: dict[str, Any] = {"_class_name": PIPELINES[architecture], **(_config_json(config, "pipeline") or {})}
    index["_class_name"] = PIPELINES[architecture]
    for component in ("unet", "vae"):
        _write_json(folder / component / "config.json", _config_json(config, component) or {})
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"])
    for component in ("text_encoder", "text_encoder_2"):
        tokenizer = tokenizer_folder(component)
        if component not in get_family(family).text_encoders:
            index[component] = index[tokenizer] = [None, None]
            continue
        _write_json(folder / component / "config.json", _config_json(config, component) or {})
        write_clip_tokenizer(folder / tokenizer, _config_json(config, f"{tokenizer}_config") or {})
        index[component] = ["transformers", exporter.text_encoder_class(component)]
        index[tokenizer] = ["transformers", "CLIPTokenizer"]
    if not family.startswith("sdxl"):
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        index.pop("text_encoder_2")
        index.pop("tokenizer_2")
    scheduler = {**(_config_json(config, "scheduler_config") or {}), "prediction_type": prediction_type}
    _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]
    _write_json(folder / "model_index.json", index)
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_pipeline(plan: LoadPlan, folder: Path) -> Any:
    """diffusers' pipeline read from the checkpoint by ``from_single_file`` with the local configs, in float32."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    architecture = plan.checkpoint.architecture
    extra = {"vae": load_vae(plan.vae, folder, plan.allow_pickle)} if plan.vae else {}
    pipeline_class = getattr(diffusers, PIPELINES[architecture.name])
    path = plan.checkpoint.path

    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        # In the file's own dtype: the file's tensors and a float32 copy of every module at once would be the peak
        # (an fp16 SDXL file: 6.9 + 14 GB); cast below, one module at a time, once the file's tensors are gone.
        pipe = pipeline_class.from_single_file(str(path), config=str(folder), local_files_only=True, **extra)
    except Exception as exc:  # diffusers raises ValueError, KeyError, RuntimeError... for a file its configs don't fit
        text = str(exc).strip().split(" If you want")[0]
        reason = text.splitlines()[0][:300] if text else type(exc).__name__
        raise CheckpointError(f"diffusers cannot load {path} with the {plan.config} configs ({reason}); a model at "
                              "other widths needs its own configs (--config)") from None
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    gc.collect()
    for name in ("unet", "vae", *get_family(architecture.family).text_encoders):
        module = getattr(pipe, name)
        if any(p.is_meta for p in module.parameters()):
            raise CheckpointError(f"{path} lacks some of the {name}'s tensors for the {plan.config} configs; it is "
                                  "incomplete or of another width (--config)")
        # Exact from fp16 and bf16. torch's own .to: diffusers' override warns about keeping modules in float32,
        # which is what this does.
        torch.nn.Module.to(module, torch.float32)
    return pipe


def load_vae(spec: Path, folder: Path, allow_pickle: bool) -> Any:
    """``--vae``: a diffusers VAE folder, a diffusers-format VAE file, or a VAE in the original layout (alone or inside a
    full checkpoint)."""
    from diffusers import AutoencoderKL

    if spec.is_dir():
        sub = spec / "vae" if (spec / "vae" / "config.json").is_file() else spec
        if not (sub / "config.json").is_file():
            raise CheckpointError(f"--vae {spec} is a folder without a VAE config.json (nor vae/config.json)")
        return AutoencoderKL.from_pretrained(sub, torch_dtype=torch.float32).eval()
    shapes, _, _ = read_tensor_names(spec, allow_pickle)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in shapes):
        from diffusers.models.model_loading_utils import load_state_dict

        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        missing, unexpected = vae.load_state_dict(load_state_dict(str(spec)), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"--vae {spec} does not fit the VAE configs ({len(missing)} missing, "
                                  f"{len(unexpected)} unexpected tensors)")
        return vae.float().eval()
    if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.", "vae.")) for k in shapes):
        raise CheckpointError(f"--vae {spec} holds no VAE tensors (encoder.*, decoder.* or first_stage_model.*)")
    try:
        vae = AutoencoderKL.from_single_file(str(spec), config=str(folder), subfolder="vae", local_files_only=True,
                                             torch_dtype=torch.float32)
    except Exception as exc:
        raise CheckpointError(f"--vae {spec} cannot be read as this model's VAE ({str(exc).splitlines()[0][:200]})") \
            from None
    return vae.eval()


def load_single_file(path: Path, options: SourceOptions) -> SourceModels:
    """A ``SourceModels`` from a checkpoint file (float32, eval mode), its info naming file, digest and choices."""
    from diffship.exporter.families import tokenizer_folder
    from diffship.exporter.sources import SourceModels, pipeline_options

    plan = plan_load(path, options)
    log.debug("%s", plan.describe())  # the CLI prints it
    architecture = plan.checkpoint.architecture
    scratch = tempfile.TemporaryDirectory(prefix="diffship-single-file-")
    try:
        folder = write_config_folder(Path(scratch.name) / "config", architecture.name, architecture.family,
                                     plan.config, plan.prediction_type)
        pipe = load_pipeline(plan, folder)
    except BaseException:
        scratch.cleanup()
        raise
    encoders = get_family(architecture.family).text_encoders
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return SourceModels(
        family=architecture.family,
        text_encoders={c: getattr(pipe, c).eval() for c in encoders},
        unet=pipe.unet.eval(),
        vae=pipe.vae.eval(),
        tokenizers={c: folder / tokenizer_folder(c) for c in encoders},
        scheduler_config_path=folder / "scheduler" / "scheduler_config.json",
        info=source_info(plan, options),
        pipeline_options=pipeline_options(index),
        _scratch=scratch,
    )


def source_info(plan: LoadPlan, options: SourceOptions) -> dict[str, Any]:
    """The manifest's record: the file and its digest, what was detected, and every choice made for it."""
    path = plan.checkpoint.path.resolve()
    overrides: dict[str, Any] = {}
    if options.config is not None:
        overrides["config"] = options.config
    if options.prediction_type is not None:
        overrides["prediction_type"] = options.prediction_type
    if options.vae is not None:
        vae = options.vae.resolve()
        overrides["vae"] = str(vae)
        overrides["vae_sha256"] = file_sha256(vae) if vae.is_file() else None
    if options.allow_pickle:
        overrides["allow_pickle"] = True
    return {"kind": "single_file", "path": str(path), "file_sha256": file_sha256(path),
            "architecture": plan.checkpoint.architecture.name, "weights_dtype": plan.checkpoint.weights_dtype,
            "config": plan.config, "prediction_type": plan.prediction_type,
            "prediction_type_from": plan.prediction_from.split(";")[0], "overrides": overrides,
            "random_weights": False}


def read_back(path: Path, config: str, include_vae: bool = True) -> dict[str, Any]:
    """Component -> module, as diffusers' ``from_single_file`` reads ``path`` with ``config``'s bundled configs
    (for scripts/make_single_file_checkpoints.py --check and the tests)."""
    from diffship.exporter.sources import SourceOptions

    vae_folder = None
    scratch = tempfile.TemporaryDirectory(prefix="diffship-read-back-")
    with scratch:
        options = SourceOptions(config=config)
        if not include_vae:
            vae_folder = Path(scratch.name) / "vae"
            options = SourceOptions(config=config, vae=vae_folder)
            _write_json(vae_folder / "config.json", _config_json(config, "vae") or {})
            from diffusers import AutoencoderKL

            AutoencoderKL.from_config(_config_json(config, "vae")).save_pretrained(vae_folder)
        plan = plan_load(path, options)
        architecture = plan.checkpoint.architecture
        folder = write_config_folder(Path(scratch.name) / "config", architecture.name, architecture.family,
                                     plan.config, plan.prediction_type)
        pipe = load_pipeline(plan, folder)
        names = ("unet", *(("vae",) if include_vae else ()), *get_family(architecture.family).text_encoders)
        return {name: getattr(pipe, name) for name in names}

