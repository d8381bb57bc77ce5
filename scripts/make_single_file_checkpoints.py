"""Write single-file checkpoints in the original Stable Diffusion layout (LDM for SD 1.x/2.x, SGM for SDXL) from a
diffship model preset: the kind of file people download from model sites or train with kohya and the web UI.

diffusers' pip package reads these files (``from_single_file``) but does not ship the reverse conversion, so the key
mapping is written here, as the inverse of diffusers' ``loaders/single_file_utils.py``; ``--check`` (and the tests)
prove it by reading each file back with diffusers' own ``from_single_file`` and comparing every tensor.

    python scripts/make_single_file_checkpoints.py --model tiny --out /tmp/tiny.safetensors
    python scripts/make_single_file_checkpoints.py --model tiny-xl --dtype fp16 --no-vae --out /tmp/xl-novae.safetensors
    python scripts/make_single_file_checkpoints.py --model sd15 --random-weights --out /tmp/sd15-random.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Where each text encoder lives in the original files, and in which layout: "hf" (the transformers CLIPTextModel
# keys under a prefix, as SD 1.x and SDXL's first encoder are stored) or "open_clip" (OpenCLIP's own names, fused
# q/k/v projections, as SD 2.x and SDXL's OpenCLIP-bigG encoder are stored).
TEXT_ENCODER_LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "sd1": {"text_encoder": ("hf", "cond_stage_model.transformer.")},
    "sd2": {"text_encoder": ("open_clip", "cond_stage_model.model.")},
    "sdxl": {"text_encoder": ("hf", "conditioner.embedders.0.transformer."),
             "text_encoder_2": ("open_clip", "conditioner.embedders.1.model.")},
    "sdxl-refiner": {"text_encoder_2": ("open_clip", "conditioner.embedders.0.model.")},
}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
               "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _rename_first(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_key(key: str, layers_per_block: int, up_attentions: set[int]) -> str:
    """The LDM name of one diffusers UNet parameter (without the ``model.diffusion_model.`` prefix)."""
    fixed = _rename_first(key, _UNET_FIXED)
    if fixed != key:
        return fixed
    parts = key.split(".")
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}.{_rename_first(rest, _RESNET) if parts[1] == 'resnets' else rest}"
    block, kind = int(parts[1]), parts[2]
    per_block = layers_per_block + (1 if parts[0] == "up_blocks" else 0)
    first = 1 + block * (layers_per_block + 1) if parts[0] == "down_blocks" else block * per_block
    side = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
    if kind in ("downsamplers", "upsamplers"):
        last = first + per_block - 1 if parts[0] == "up_blocks" else first + layers_per_block
        if parts[0] == "down_blocks":
            return f"input_blocks.{last}.0.op.{parts[-1]}"
        return f"output_blocks.{last}.{2 if block in up_attentions else 1}.conv.{parts[-1]}"
    layer = first + int(parts[3])
    rest = ".".join(parts[4:])
    if kind == "resnets":
        return f"{side}.{layer}.0.{_rename_first(rest, _RESNET)}"
    return f"{side}.{layer}.1.{rest}"


def unet_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    up_attentions = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    return {UNET_PREFIX + unet_key(k, int(config["layers_per_block"]), up_attentions): v for k, v in state.items()}


def vae_key(key: str, up_blocks: int) -> str:
    """The LDM name of one diffusers AutoencoderKL parameter (without the ``first_stage_model.`` prefix)."""
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    side, rest = parts[0], parts[1:]
    name = ".".join(rest)
    if rest[0] == "conv_norm_out":
        return f"{side}.norm_out.{rest[-1]}"
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(rest[2]) + 1}.{tail}"
        return f"{side}.mid.attn_1.{_rename_first('.'.join(rest[3:]), _VAE_ATTENTION)}"
    block = int(rest[1])
    ldm_block = block if side == "encoder" else up_blocks - 1 - block
    ldm_side = "down" if side == "encoder" else "up"
    if rest[2] in ("downsamplers", "upsamplers"):
        return f"{side}.{ldm_side}.{ldm_block}.{'downsample' if side == 'encoder' else 'upsample'}.conv.{rest[-1]}"
    tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
    assert rest[2] == "resnets", name
    return f"{side}.{ldm_side}.{ldm_block}.block.{rest[3]}.{tail}"


def vae_to_original(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        name = VAE_PREFIX + vae_key(k, len(config["up_block_types"]))
        # The original VAE's attention projections are 1x1 convolutions; diffusers' are linear layers.
        out[name] = v[:, :, None, None] if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2 else v
    return out


def hf_clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.``); the original files always have it.
    return {prefix + (k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
            for k, v in state.items()}


def open_clip_to_original(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        k = key.removeprefix("text_model.")
        if k.endswith("position_ids"):
            continue
        if k == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out[prefix + "ln_final." + k.rsplit(".", 1)[1]] = value
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        else:
            layer, rest = k.removeprefix("encoder.layers.").split(".", 1)
            base = f"{prefix}transformer.resblocks.{layer}."
            if rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                fused.setdefault(f"{base}attn.in_proj_{rest.rsplit('.', 1)[1]}", {})[rest[10]] = value
            else:
                out[base + _rename_first(rest, _OPEN_CLIP_LAYER)] = value
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_original(source: Any, include_vae: bool = True, clip_layout: str | None = None) -> dict[str, torch.Tensor]:
    """Every module of a ``SourceModels`` under its name in the original single file; ``clip_layout="hf"`` stores an
    SD 2.x text encoder in the transformers layout (``cond_stage_model.transformer.``), as some trainers save it."""
    state: dict[str, torch.Tensor] = unet_to_original(source.unet.state_dict(), source.unet.config)
    if include_vae:
        state.update(vae_to_original(source.vae.state_dict(), source.vae.config))
    for component, (layout, prefix) in TEXT_ENCODER_LAYOUTS[source.family].items():
        if clip_layout == "hf" and source.family == "sd2":
            layout, prefix = "hf", "cond_stage_model.transformer."
        encoder_state = source.text_encoders[component].state_dict()
        convert = hf_clip_to_original if layout == "hf" else open_clip_to_original
        state.update(convert(encoder_state, prefix))
    return state


def write_checkpoint(state: Mapping[str, torch.Tensor], out: Path, dtype: str = "fp32") -> Path:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    cast = {k: (v.to(DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    partial = out.with_name(f".{out.name}.partial")
    save_file(cast, str(partial), metadata={"format": "pt", "written_by": "diffship make_single_file_checkpoints"})
    partial.replace(out)
    return out


def differences(expected: Any, loaded: Any) -> Iterator[str]:
    """Names of tensors that differ between two modules (missing, extra, shape, dtype or any byte)."""
    want, got = expected.state_dict(), loaded.state_dict()
    for name in sorted(set(want) | set(got)):
        if name.endswith("position_ids"):
            continue
        if name not in want or name not in got:
            yield f"{name}: {'missing' if name not in got else 'unexpected'}"
        elif want[name].shape != got[name].shape or not torch.equal(want[name], got[name]):
            yield f"{name}: differs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="diffship preset (tiny, tiny-v, tiny-inpaint, tiny-xl, ...)")
    parser.add_argument("--random-weights", action="store_true", help="full-size presets with seeded random weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the stored tensors")
    parser.add_argument("--no-vae", action="store_true", help="leave the VAE out (as many finetunes are shared)")
    parser.add_argument("--clip-layout", choices=["original", "hf"], default="original",
                        help="hf: an SD 2.x text encoder in the transformers layout instead of OpenCLIP's")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--check", action="store_true", help="read it back with diffusers' from_single_file and "
                        "compare every tensor (fp32 files: exactly)")
    args = parser.parse_args(argv)
    from diffship.exporter.sources import load_source

    source = load_source(model=args.model, random_weights=args.random_weights, seed=args.seed)
    if args.dtype != "fp32":  # in place, tensor by tensor: a full-size SDXL never holds fp32 and fp16 copies at once
        for module in source.modules().values():
            torch.nn.Module.to(module, DTYPES[args.dtype])
    write_checkpoint(to_original(source, include_vae=not args.no_vae, clip_layout=args.clip_layout), args.out, args.dtype)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:,.1f} MB, {source.family}, {args.dtype}"
          f"{', no VAE' if args.no_vae else ''})")
    if args.check:
        from diffship.exporter.single_file import read_back

        bad = [f"{component}.{line}" for component, module in read_back(args.out, args.model, not args.no_vae).items()
               for line in differences(_cast(source.modules()[component], args.dtype), module)]
        if bad:
            raise SystemExit(f"diffusers reads {len(bad)} tensors differently: {bad[:5]}")
        print("checked: diffusers' from_single_file reads back exactly these weights")


def _cast(module: Any, dtype: str) -> Any:
    """The module as stored at ``dtype`` and read back in float32 (what an fp16 file can hold)."""
    import copy

    return copy.deepcopy(module).to(DTYPES[dtype]).float() if dtype != "fp32" else module


if __name__ == "__main__":
    main()
