"""Make LoRA files for a diffusers model folder with peft: random, non-zero up weights (the test and bench fixtures).

    python -m diffship.tools.make_lora /tmp/tiny-diffusers loras/random-r4.safetensors --rank 4 --alpha 8
    python -m diffship.tools.make_lora /tmp/tiny-diffusers loras/random-r4-kohya.safetensors --rank 4 --kohya

The diffusers/peft format is what ``save_lora_weights`` writes (adapter metadata included, so alpha travels with the
file); ``--kohya`` rewrites the same weights into the kohya / web-UI key format (``lora_unet_...``, ``lora_te_...``,
``.lora_down/.lora_up/.alpha``). Nothing here is trained: the files exist to check that a LoRA is applied exactly as
diffusers applies it, and to time a swap.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffship.core.errors import DiffshipError, require

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2", "conv1")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1")

log = logging.getLogger("make_lora")


def _randomise(model: Any, seed: int, up_std: float) -> None:
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                std = up_std if "lora_B" in name else 1.0 / parameter.shape[1] ** 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def make_lora(
    model_dir: Path,
    out: Path,
    rank: int = 4,
    alpha: int | None = None,
    seed: int = 0,
    unet_targets: Sequence[str] = UNET_TARGETS,
    text_targets: Sequence[str] = TEXT_TARGETS,
    up_std: float = 0.05,
    metadata: bool = True,
) -> Path:
    """A peft LoRA of rank ``rank`` (alpha ``alpha``, default the rank) on ``model_dir``'s UNet and text encoder,
    saved with diffusers' ``save_lora_weights`` at ``out``."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    layers: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(unet_targets), init_lora_weights=False)
    unet.add_adapter(config)
    _randomise(unet, seed, up_std)
    layers["unet_lora_layers"] = get_peft_model_state_dict(unet)
    configs["unet_lora_adapter_metadata"] = config.to_dict()
    if text_targets:
        text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
        text_config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(text_targets),
                                 init_lora_weights=False)
        text_encoder.add_adapter(text_config)
        _randomise(text_encoder, seed + 1, up_std)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(text_encoder)
        configs["text_encoder_lora_adapter_metadata"] = text_config.to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        StableDiffusionPipeline.save_lora_weights(scratch, **layers, **(configs if metadata else {}),
                                                  weight_name="lora.safetensors")
        (Path(scratch) / "lora.safetensors").replace(out)
    return out


def to_kohya(peft_file: Path, out: Path) -> Path:
    """The same LoRA in the kohya / web-UI format: ``lora_unet_<module, _ for .>.lora_down.weight`` and so on."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {}
    with safe_open(str(peft_file), "pt") as handle:
        metadata = json.loads((handle.metadata() or {}).get("lora_adapter_metadata", "{}"))
        for key in handle.keys():  # noqa: SIM118 (safe_open has no iteration protocol)
            found = re.match(r"^(unet|text_encoder)\.(.+?)\.(?:lora_(A|B)|lora\.(down|up))\.weight$", key)
            if found is None:
                raise ValueError(f"{peft_file}: unexpected key {key}")
            component, module, ab, du = found.groups()
            role = {"A": "down", "B": "up"}.get(ab or "", du)
            prefix = "lora_unet" if component == "unet" else "lora_te"
            name = f"{prefix}_{module.replace('.', '_')}"
            tensor = handle.get_tensor(key)
            tensors[f"{name}.lora_{role}.weight"] = tensor
            if role == "down":
                import torch

                alpha = metadata.get(f"{component}.lora_alpha", tensor.shape[0])
                tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m diffship.tools.make_lora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="a diffusers folder (unet/, text_encoder/)")
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=int, default=None, help="default: the rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-only", action="store_true", help="no text-encoder layers")
    parser.add_argument("--kohya", action="store_true", help="write the kohya / web-UI key format")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for library in ("torch", "diffusers", "peft"):
            require(library, "make_lora")
    except DiffshipError as exc:
        parser.exit(2, f"error: {exc}\n")
    if not (args.model_dir / "unet").is_dir():
        parser.exit(2, f"error: {args.model_dir} is not a diffusers folder (no unet/)\n")
    target = args.out.with_suffix(".peft.safetensors") if args.kohya else args.out
    make_lora(args.model_dir, target, args.rank, args.alpha, args.seed, text_targets=() if args.unet_only else TEXT_TARGETS)
    if args.kohya:
        to_kohya(target, args.out)
        target.unlink()
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
