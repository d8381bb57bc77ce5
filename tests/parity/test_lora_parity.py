"""LoRA without rebuilding: runtime.Pipeline with LoRAs against diffusers' ``load_lora_weights`` + ``fuse_lora``.

LoRAs are made with peft on the tiny models (``lora_files`` in tests/conftest.py, diffship/tools/make_lora.py): non-zero
up weights, rank 4 and 8, UNet (attention, projections, feed-forward, 3x3 convolutions) and text encoder, one file in
the kohya format converted from a peft one. Bar: fp32 max pixel difference <= 2/255 (docs/design.md, "Parity bars").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.lora import LoraError  # noqa: E402

PROMPTS = ["a red fox in the snow", "a bowl of ramen"]
HEIGHT, WIDTH = 64, 96
STEPS = 6
SEED = 7


def latents() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((len(PROMPTS), 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32)


def generate(pipe: Pipeline) -> np.ndarray:
    result = pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=7.5, scheduler="ddim", height=HEIGHT,
                  width=WIDTH, latents=latents(), seed=SEED)
    return np.stack(result.images)


def diffusers_images(folder: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    """diffusers' own LoRA path: each file loaded as an adapter, weighted, fused into the weights."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    names = [f"lora{k}" for k in range(len(loras))]
    for name, (path, _) in zip(names, loras, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    if len(loras) == 1:
        pipe.fuse_lora(lora_scale=loras[0][1], adapter_names=names)
    else:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
        pipe.fuse_lora(adapter_names=names)
    reference = Reference(pipe, pipe.scheduler.config, "cpu", "fp32", 8)
    seeds = [SEED + k for k in range(len(PROMPTS))]
    return np.stack(run_reference(reference, PROMPTS, latents(), seeds, None, STEPS, 7.5, "ddim"))


def worst(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.fixture(scope="module")
def tiny_pipe(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def base_images(tiny_pipe: Pipeline) -> np.ndarray:
    tiny_pipe.set_loras([])
    return generate(tiny_pipe)


@pytest.mark.parametrize("name, scale", [("r4", 0.8), ("r8", 1.0), ("r4-kohya", 0.8)])
def test_lora_matches_diffusers_fuse_lora(name, scale, tiny_pipe, base_images, lora_files, pretrained_dirs) -> None:
    tiny_pipe.set_loras([(lora_files[name], scale)])
    ours = generate(tiny_pipe)
    expected = diffusers_images(pretrained_dirs["tiny"], [(lora_files[name], scale)])
    assert worst(ours, base_images) > 10, "the LoRA should visibly change the images"
    assert worst(ours, expected) <= 2


def test_two_loras_stacked_match_diffusers_adapters(tiny_pipe, lora_files, pretrained_dirs) -> None:
    loras = [(lora_files["r4"], 0.6), (lora_files["r8"], 0.5)]
    tiny_pipe.set_loras(loras)
    assert worst(generate(tiny_pipe), diffusers_images(pretrained_dirs["tiny"], loras)) <= 2


def test_set_loras_empty_gives_back_the_base_images_byte_for_byte(tiny_pipe, base_images, lora_files) -> None:
    tiny_pipe.set_loras([(lora_files["r4"], 1.0)])
    assert not np.array_equal(generate(tiny_pipe), base_images)
    tiny_pipe.set_loras([])
    assert tiny_pipe.loras == ()
    assert np.array_equal(generate(tiny_pipe), base_images)


def test_lora_on_build_ort_graphs_matches_diffusers(ort_built_package, lora_files, pretrained_dirs) -> None:
    # The CPU graphs hold convolution filters reordered into NCHWc blocks: the weight map says where they went.
    with Pipeline.from_package(ort_built_package, device="cpu", loras=[f"{lora_files['r4']}:0.8"]) as pipe:
        assert pipe._selection.engine_set is not None
        ours = generate(pipe)
    assert worst(ours, diffusers_images(pretrained_dirs["tiny"], [(lora_files["r4"], 0.8)])) <= 2


def test_lora_on_fp16_onnx_psnr_against_diffusers_fp32(tiny_package, lora_files, pretrained_dirs) -> None:
    with Pipeline.from_package(tiny_package, precision="fp16", device="cpu", loras=[(lora_files["r4"], 0.8)]) as pipe:
        ours = generate(pipe).astype(np.float64)
    expected = diffusers_images(pretrained_dirs["tiny"], [(lora_files["r4"], 0.8)]).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / max(float(np.mean((ours - expected) ** 2)), 1e-12))
    assert psnr >= 30, f"PSNR {psnr:.1f} dB"


def test_lora_on_sd2_tiny_v_matches_diffusers(tiny_v_package, lora_files, pretrained_dirs) -> None:
    with Pipeline.from_package(tiny_v_package, device="cpu", loras=[(lora_files["v-r4"], 1.0)]) as pipe:
        ours = generate(pipe)
    assert worst(ours, diffusers_images(pretrained_dirs["tiny-v"], [(lora_files["v-r4"], 1.0)])) <= 2


def test_a_lora_for_another_model_is_refused_and_the_pipeline_keeps_running_as_it_was(
    tiny_pipe, base_images, lora_files, tmp_path
) -> None:
    from safetensors.numpy import load_file, save_file

    tiny_pipe.set_loras([])
    # A LoRA made for a model whose cross-attention reads 64-wide text embeddings (tiny's are 32 wide).
    tensors = load_file(str(lora_files["r4"]))
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"
    tensors[key] = np.ones((tensors[key].shape[0], 64), np.float32)
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(tensors, str(mismatched))
    with pytest.raises(LoraError, match=r"attn2.to_k is \[32, 32\] in this package.*another model family"):
        tiny_pipe.set_loras([(mismatched, 1.0)])
    with pytest.raises(LoraError, match="does not exist"):
        tiny_pipe.set_loras([(lora_files["r4"], 1.0), (tmp_path / "missing.safetensors", 1.0)])
    unknown = tmp_path / "unknown.safetensors"
    save_file({"model.layer.weight": np.ones((2, 2), np.float32)}, str(unknown))
    with pytest.raises(LoraError, match="no key names a module"):
        tiny_pipe.set_loras([unknown])
    assert tiny_pipe.loras == ()
    assert np.array_equal(generate(tiny_pipe), base_images)
