"""LoRA files read without torch: the safetensors reader against the safetensors library, the two key formats, alpha,
and the refusals (docs/design.md, "LoRA"). The parity of applied LoRAs is tests/parity/test_lora_parity.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from diffship.core.weights import WeightSlot, from_layout, to_layout
from diffship.runtime.lora import LoraError, LoraRequest, read_lora, read_safetensors

ADAPTERS = {"unet": ("unet", "lora_unet"), "text_encoder": ("text_encoder", "lora_te")}
MODULES = {
    "unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"},
    "text_encoder": {"encoder.layers.0.self_attn.q_proj"},
}
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def _pair(rank: int, out: int = 8, inputs: int = 6, kernel: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rank)
    down = rng.standard_normal((rank, inputs, *kernel)).astype(np.float32)
    up = rng.standard_normal((out, rank, *(1,) * len(kernel))).astype(np.float32)
    return down, up


def test_read_safetensors_matches_the_safetensors_library(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    tensors = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.linspace(-2, 2, 6).astype(np.float16),
               "scalar": np.array(3.0, np.float32)}
    save_file(tensors, str(path), metadata={"k": "v"})
    ours, metadata = read_safetensors(path)
    reference = load_file(str(path))
    assert metadata == {"k": "v"} and set(ours) == set(reference)
    for name, array in reference.items():
        assert ours[name].dtype == array.dtype and np.array_equal(ours[name], array)


def test_read_safetensors_reads_bfloat16(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    values = torch.tensor([[1.5, -2.25], [0.0078125, 3e4]], dtype=torch.bfloat16)
    save_torch({"w": values}, str(tmp_path / "bf16.safetensors"))
    ours, _ = read_safetensors(tmp_path / "bf16.safetensors")
    assert np.array_equal(ours["w"], values.float().numpy())


@pytest.mark.parametrize("content, message", [
    (b"", "shorter than its 8-byte header"),
    (b"\xff" * 16, "header length"),
    ((5).to_bytes(8, "little") + b"nojso", "not JSON"),
])
def test_read_safetensors_refuses_what_is_not_one(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(LoraError, match=message):
        read_safetensors(path)


def test_read_safetensors_refuses_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"a": np.ones((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LoraError, match="outside the file"):
        read_safetensors(path)
    with pytest.raises(LoraError, match="does not exist"):
        read_safetensors(tmp_path / "none.safetensors")
    with pytest.raises(LoraError, match="is a folder"):
        read_safetensors(tmp_path)


@pytest.mark.parametrize("value, path, scale", [
    ("a/b.safetensors", "a/b.safetensors", 1.0),
    ("a/b.safetensors:0.75", "a/b.safetensors", 0.75),
    ("C:/loras/x.safetensors", "C:/loras/x.safetensors", 1.0),
    (("x.safetensors", -0.5), "x.safetensors", -0.5),
])
def test_lora_request_parse_forms(value, path, scale) -> None:
    parsed = LoraRequest.parse(value)
    assert parsed.path == Path(path) and parsed.scale == scale


def test_lora_request_refuses_a_non_finite_scale() -> None:
    with pytest.raises(LoraError, match="finite number"):
        LoraRequest.parse(("x.safetensors", float("nan")))


def test_read_lora_diffusers_format_with_metadata_alpha(tmp_path: Path) -> None:
    down, up = _pair(4)
    conv_down, conv_up = _pair(2, kernel=(3, 3))
    path = tmp_path / "peft.safetensors"
    save_file({f"unet.{Q}.lora_A.weight": down, f"unet.{Q}.lora_B.weight": up,
               "unet.down_blocks.0.resnets.0.conv1.lora_A.weight": conv_down,
               "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": conv_up,
               # transformers 4 spelling (text_model.) of a module transformers 5 names without it
               "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.down.weight": down,
               "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora.up.weight": up},
              str(path), metadata={"lora_adapter_metadata": json.dumps(
                  {"unet.lora_alpha": 8, "unet.alpha_pattern": {"conv1": 1}, "text_encoder.lora_alpha": 2})})
    lora = read_lora(path, ADAPTERS, MODULES, "sd1")
    layers = {(layer.component, layer.module): layer for layer in lora.layers}
    assert lora.format == "diffusers" and not lora.unmatched
    assert layers["unet", Q].alpha == 8 and layers["unet", "down_blocks.0.resnets.0.conv1"].alpha == 1
    assert layers["text_encoder", "encoder.layers.0.self_attn.q_proj"].alpha == 2
    conv = layers["unet", "down_blocks.0.resnets.0.conv1"]
    expected = np.einsum("or,rikl->oikl", conv_up[:, :, 0, 0], conv_down) * 0.5
    assert np.allclose(conv.delta((8, 6, 3, 3), 0.5), expected, atol=1e-6)


def test_read_lora_kohya_format_alpha_and_rank_default(tmp_path: Path) -> None:
    down, up = _pair(4)
    path = tmp_path / "kohya.safetensors"
    name = "lora_unet_" + Q.replace(".", "_")
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": np.array(2.0),
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down,
               "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": up,
               "lora_unet_no_such_module.lora_down.weight": down}, str(path))
    lora = read_lora(path, ADAPTERS, MODULES, "sd1")
    alphas = {(layer.component, layer.module): layer.alpha for layer in lora.layers}
    assert lora.format == "kohya"
    assert alphas == {("unet", Q): 2.0, ("text_encoder", "encoder.layers.0.self_attn.q_proj"): 4.0}
    assert lora.unmatched == ("lora_unet_no_such_module.lora_down.weight",)


@pytest.mark.parametrize("keys, message", [
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"}, "is for SDXL"),
    ({"transformer.single_blocks.0.attn.to_q.lora_A.weight"}, "transformer model"),
    ({f"unet.{Q}.lora_A.weight", f"unet.{Q}.dora_scale"}, "DoRA"),
    ({"model.diffusion_model.input_blocks.1.weight"}, "no key names a module"),
    ({f"unet.{Q}.lora_A.weight"}, "has no up"),
])
def test_read_lora_refusals(tmp_path: Path, keys: set[str], message: str) -> None:
    path = tmp_path / "x.safetensors"
    save_file({key: np.ones((4, 6), np.float32) for key in keys}, str(path))
    with pytest.raises(LoraError, match=message):
        read_lora(path, ADAPTERS, MODULES, "sd1")


@pytest.mark.parametrize("layout, block, shape", [
    ("torch", 0, (8, 6)), ("transposed", 0, (8, 6)), ("torch", 0, (8, 6, 3, 3)),
])
def test_weight_layouts_read_back(layout: str, block: int, shape: tuple[int, ...]) -> None:
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    stored = to_layout(weight, layout, block)
    slot = WeightSlot("w", shape, stored.shape, "float32", layout)
    assert np.array_equal(from_layout(stored, slot), weight)


def test_nchwc_layouts_pad_and_block_channels() -> None:
    weight = np.random.default_rng(0).standard_normal((10, 12, 3, 3)).astype(np.float32)
    blocked = to_layout(weight, "nchwc_oihwbibo", 8)  # [O/8, I/8, kh, kw, 8 in, 8 out], zero padded
    assert blocked.shape == (2, 2, 3, 3, 8, 8)
    assert blocked[1, 0, 2, 1, 5, 1] == weight[9, 5, 2, 1] and blocked[1, 1, 0, 0, 7, 7] == 0
    single = to_layout(weight, "nchwc_oihwbo", 8)  # [O/8, I, kh, kw, 8 out]
    assert single.shape == (2, 12, 3, 3, 8) and single[1, 11, 2, 2, 1] == weight[9, 11, 2, 2]
