"""What a single checkpoint file holds, read from its tensor names and shapes only (docs/design.md, "Single-file
checkpoints"): the architecture it is, or one line saying what else it is and what ``export`` takes.

A ``.safetensors`` file is judged by its header alone (no tensor is read); a ``.ckpt`` is a pickle and is opened only
when the user allows it, and then with ``torch.load(weights_only=True)``, which builds tensors and plain containers
and executes nothing else.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from diffship.core.errors import DiffshipError

UNET = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
ACCEPTED = ("export takes a complete SD 1.x, SD 2.x, SDXL base or SDXL refiner checkpoint (.safetensors, the "
            "original single-file layout, inpainting variants included) or a diffusers pipeline folder")
SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(DiffshipError):
    """The file is not a checkpoint diffship can export; the message says what it is and what is accepted."""


@dataclass(frozen=True)
class Architecture:
    name: str
    """``sd1``, ``sd1-inpaint``, ``sd2``, ``sd2-inpaint``, ``sdxl`` or ``sdxl-refiner``."""
    family: str
    description: str
    default_config: str
    """The bundled full-size configs (``exporter/configs/<name>``) a file of this architecture loads with."""
    unet_in_channels: int


ARCHITECTURES = {
    "sd1": Architecture("sd1", "sd1", "SD 1.x (CLIP ViT-L text encoder)", "sd15", 4),
    "sd1-inpaint": Architecture("sd1-inpaint", "sd1", "SD 1.x inpainting (9-channel UNet)", "sd15-inpaint", 9),
    "sd2": Architecture("sd2", "sd2", "SD 2.x (OpenCLIP ViT-H text encoder)", "sd21", 4),
    "sd2-inpaint": Architecture("sd2-inpaint", "sd2", "SD 2.x inpainting (9-channel UNet)", "sd2-inpaint", 9),
    "sdxl": Architecture("sdxl", "sdxl", "SDXL base (CLIP ViT-L + OpenCLIP bigG text encoders)", "sdxl", 4),
    "sdxl-refiner": Architecture("sdxl-refiner", "sdxl-refiner", "SDXL refiner (OpenCLIP bigG text encoder)",
                                 "sdxl-refiner", 4),
}


@dataclass(frozen=True)
class Checkpoint:
    """What ``inspect_checkpoint`` found in a file."""

    path: Path
    architecture: Architecture
    weights_dtype: str
    """The UNet's stored dtype (``fp32``, ``fp16``, ``bf16``)."""
    has_vae: bool
    has_ema: bool
    """The file also carries an EMA copy (``model_ema.*``); the non-EMA weights are exported, as diffusers does."""
    pickle: bool
    unet_width: int = 0
    """The UNet's first block width (``conv_in``'s output channels: 320 in SD 1.x/2.x and SDXL)."""
    context_width: int = 0
    """The width of the text the UNet attends to (768 SD 1.x, 1024 SD 2.x, 2048 SDXL, 1280 the refiner)."""

    def fits(self, unet_config: dict[str, object]) -> bool:
        """Whether a UNet config has this file's widths (its first block and cross-attention)."""
        blocks = unet_config.get("block_out_channels")
        first = blocks[0] if isinstance(blocks, list) and blocks else None
        return first == self.unet_width and unet_config.get("cross_attention_dim") == self.context_width

    def describe(self) -> str:
        return (f"{self.architecture.description}, {self.weights_dtype} weights, "
                f"{'VAE included' if self.has_vae else 'no VAE'}{', EMA copy ignored' if self.has_ema else ''}")


def inspect_checkpoint(path: Path, allow_pickle: bool = False) -> Checkpoint:
    """The architecture of the file at ``path``, or a CheckpointError saying what it is instead."""
    shapes, dtypes, pickled = read_tensor_names(path, allow_pickle)
    context = next((shape[1] for name, shape in shapes.items()
                    if name.startswith(UNET) and name.endswith("attn2.to_k.weight") and len(shape) == 2), 0)
    return Checkpoint(path, classify(path, shapes), _main_dtype(dtypes), any(k.startswith(VAE_PREFIXES) for k in shapes),
                      sum(k.startswith("model_ema.") for k in shapes) > 100, pickled,
                      shapes[UNET + "input_blocks.0.0.weight"][0], context)


def read_tensor_names(path: Path, allow_pickle: bool) -> tuple[dict[str, tuple[int, ...]], dict[str, str], bool]:
    """Tensor name -> shape and name -> dtype (``fp16`` ...), and whether the file was a pickle."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {ACCEPTED}")
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        if not allow_pickle:
            raise CheckpointError(
                f"{path} is a pickle ({path.suffix}), which can run code when loaded; convert it to .safetensors, or "
                "pass --allow-pickle to read its tensors with torch.load(weights_only=True), which executes nothing")
        shapes, dtypes = _read_pickle(path)
        return shapes, dtypes, True
    shapes, dtypes = read_safetensors_header(path)
    return shapes, dtypes, False


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length <= 1 or length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path} is not a safetensors file (no valid header); {ACCEPTED}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path} is not a safetensors file (its header is not JSON); {ACCEPTED}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file (its header is not a table); {ACCEPTED}")
    header.pop("__metadata__", None)
    shapes, dtypes, end = {}, {}, 0
    for name, entry in header.items():
        try:
            shapes[name] = tuple(int(n) for n in entry["shape"])
            dtypes[name] = SAFETENSORS_DTYPES.get(entry["dtype"], str(entry["dtype"]).lower())
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{path} is not a safetensors file (entry {name!r} is malformed); {ACCEPTED}") from None
    if 8 + length + end > size:
        raise CheckpointError(f"{path} is truncated: its header describes {8 + length + end:,} bytes but the file has "
                              f"{size:,} (an interrupted download?); download it again")
    return shapes, dtypes


def _read_pickle(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} cannot be read as plain tensors with torch.load(weights_only=True) ({reason}); "
                              "nothing in it was executed; use a .safetensors file") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a table of tensors; {ACCEPTED}")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return ({k: tuple(v.shape) for k, v in tensors.items()},
            {k: names.get(v.dtype, str(v.dtype)) for k, v in tensors.items()})


def _main_dtype(dtypes: dict[str, str]) -> str:
    unet = [d for k, d in dtypes.items() if k.startswith(UNET)] or list(dtypes.values())
    return Counter(unet).most_common(1)[0][0] if unet else "?"


def classify(path: Path, shapes: dict[str, tuple[int, ...]]) -> Architecture:
    """The architecture from the names and shapes, or a CheckpointError naming what the file is."""
    refusal = _not_a_model(shapes)
    if refusal:
        raise CheckpointError(f"{path} is {refusal}; {ACCEPTED}")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise CheckpointError(f"{path} is {_other_architecture(shapes)}; {ACCEPTED}")
    channels = conv_in[1]
    keys = shapes.keys()
    if any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        name = "sdxl"
    elif any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        name = "sdxl-refiner"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        name = "sd2"
    elif any(k.startswith("cond_stage_model.transformer.") for k in keys):
        # SD 2.x's OpenCLIP-H saved in the transformers layout (some trainers do): the UNet's linear projections
        # (SD 1.x's are 1x1 convolutions) tell them apart.
        proj_in = next((shape for k, shape in shapes.items() if k.startswith(UNET) and k.endswith(".proj_in.weight")), ())
        name = "sd2" if len(proj_in) == 2 else "sd1"
    else:
        raise CheckpointError(f"{path} holds a UNet but no text encoder (no cond_stage_model.* or conditioner.* "
                              f"tensors): a UNet-only extract cannot be exported alone; {ACCEPTED}")
    if channels == 9:
        if name.startswith("sdxl"):
            raise CheckpointError(f"{path} is an SDXL inpainting checkpoint (9-channel UNet); diffship exports SDXL "
                                  "base and refiner checkpoints and SD 1.x / 2.x inpainting, not SDXL inpainting")
        name += "-inpaint"
    elif channels != 4:
        what = "an InstructPix2Pix-style checkpoint (8-channel UNet)" if channels == 8 else \
            f"a checkpoint with a {channels}-channel UNet"
        raise CheckpointError(f"{path} is {what}; {ACCEPTED}")
    return ARCHITECTURES[name]


def _not_a_model(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What the file is when it is an add-on rather than a model, or None."""
    keys = list(shapes)
    if any("lora_" in k or ".lora." in k or k.startswith(("lora_unet", "lora_te")) or ".hada_" in k or
           ".lokr_" in k for k in keys):
        return "a LoRA (low-rank adapter), not a model: export its base model, then apply it with generate --lora FILE"
    if set(keys) & {"emb_params", "string_to_param", "string_to_token", "clip_l", "clip_g"} and len(keys) <= 8:
        return ("a textual-inversion embedding, not a model: export the model it was trained for and put its trigger "
                "words in the prompt")
    if any(k.startswith("control_model.") or "input_hint_block" in k or "controlnet_cond_embedding" in k or
           k.startswith("zero_convs.") for k in keys):
        return "a ControlNet, not a base model (diffship does not export ControlNets)"
    if not any(k.startswith(UNET) for k in keys) and _is_vae(keys):
        return "a VAE alone (no UNet or text encoder): pass it as --vae FILE beside a full checkpoint"
    return None


def _is_vae(keys: list[str]) -> bool:
    bare = [k.removeprefix("first_stage_model.").removeprefix("vae.") for k in keys]
    return bool(bare) and all(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in bare)


def _other_architecture(shapes: dict[str, tuple[int, ...]]) -> str:
    """Name another architecture diffusers knows (SD3, Flux, ...) by asking diffusers' own detector over meta tensors."""
    keys = list(shapes)
    if any(".joint_blocks." in k or k.startswith("joint_blocks.") for k in keys):
        return "a Stable Diffusion 3 checkpoint (MMDiT transformer), not SD 1.x/2.x/SDXL"
    if any("double_blocks." in k for k in keys):
        return "a Flux checkpoint (transformer with double blocks), not SD 1.x/2.x/SDXL"
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.", "joint_transformer_blocks.")) for k in keys):
        return "a diffusers-format transformer (an SD3/Flux-style DiT), not SD 1.x/2.x/SDXL"
    if any(k.startswith(("down_blocks.", "mid_block.", "up_blocks.")) for k in keys):
        return "a diffusers-format UNet file, not a complete checkpoint (give the pipeline folder it belongs to)"
    try:
        import torch
        from diffusers.loaders.single_file_utils import infer_diffusers_model_type

        meta = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        kind = infer_diffusers_model_type(meta)
    except Exception:  # the detector indexes tensors it assumes are there; unknown files can break it
        kind = None
    if kind and kind not in ("v1",):  # v1 is diffusers' fallback when nothing matches
        return f"a {kind} checkpoint (as diffusers names it), not SD 1.x/2.x/SDXL"
    return f"not a Stable Diffusion checkpoint ({len(keys)} tensors, no {UNET}* UNet)"


def file_sha256(path: Path, chunk: int = 16 * 2**20) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sidecar_parameterization(path: Path) -> tuple[str | None, Path | None]:
    """The prediction type the web UI's ``<name>.yaml`` beside the checkpoint states (``v`` -> ``v_prediction``;
    present without it -> ``epsilon``), or (None, None) when there is no sidecar."""
    for sidecar in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if sidecar.is_file():
            break
    else:
        return None, None
    # diffusers' own reader of these files (yaml.safe_load: data only), given a local path so it never goes online.
    from diffusers.loaders.single_file_utils import fetch_original_config

    try:
        config = fetch_original_config(str(sidecar), local_files_only=True)
    except Exception as exc:  # yaml's errors, or a file that is not text
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{sidecar} (the config beside the checkpoint) is not valid YAML ({reason}); fix or "
                              "remove it, or pass --prediction-type") from None
    model = config.get("model") if isinstance(config, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    value = params.get("parameterization", "eps") if isinstance(params, dict) else "eps"
    return ("v_prediction" if value == "v" else "epsilon"), sidecar
