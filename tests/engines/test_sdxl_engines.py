"""SDXL engines: build-ort and TensorRT-RTX ahead-of-time builds of ``tiny-xl`` cover both text encoders and the UNet's
added conditioning inputs (``text_embeds``, ``time_ids``) in their shape profiles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from diffship.core.families.sdxl import XLConstants
from diffship.core.package import ModelPackage
from diffship.core.profiles import shape_request
from diffship.core.specs import BuildConfig, Range

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")

V2_MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "manifests-v2"


def test_sdxl_rtx_build_profiles_include_added_conditioning(tiny_xl_package: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    from diffship.engines.tensorrt.build import BuildRequest, build_engines
    from diffship.engines.tensorrt.layers import read_layer_summary

    package_path = tmp_path / "tiny-xl"
    shutil.copytree(tiny_xl_package, package_path)
    constants = ModelPackage.open(package_path).constants
    request = BuildRequest(package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
                           shape_request(constants, Range(1, 1, 2), Range(64, 64, 96), Range(64, 64, 96)))
    outcome = build_engines(request)
    package = ModelPackage.open(package_path)
    assert outcome.engine_set == "trt-rtx-sm89-fp16-64-96x64-96-b1-2"
    engine_set = package.manifest.engines[outcome.engine_set]
    assert sorted(engine_set.components) == sorted(COMPONENTS)
    unet = engine_set.components["unet"].profile.shapes
    # Guided batch: twice the images; the pooled prompt and the six micro-conditioning numbers per row.
    pooled = XLConstants.of(constants).pooled_size
    assert unet["text_embeds"] == ((1, pooled), (2, pooled), (4, pooled))
    assert unet["time_ids"] == ((1, 6), (2, 6), (4, 6))
    assert unet["encoder_hidden_states"][2][2] == sum(encoder.hidden_size for encoder in constants.text_encoders)
    assert engine_set.components["text_encoder_2"].profile.shapes["input_ids"][2] == (4, 77)
    # force_upcast: the VAE is built from its fp32 export in fp32 (the builder's own report says so), the rest in fp16.
    assert constants.force_upcast
    sources = {name: entry.source_dtype for name, entry in engine_set.components.items()}
    assert sources == {**dict.fromkeys(COMPONENTS, "fp16"), "vae_decoder": "fp32", "vae_encoder": "fp32"}
    decoder = read_layer_summary(package, engine_set.components["vae_decoder"])
    assert decoder is not None and set(decoder.compute_layers["convolution"]) == {"Float"}, decoder
    unet_layers = read_layer_summary(package, engine_set.components["unet"])
    assert unet_layers is not None and set(unet_layers.compute_layers["convolution"]) == {"Half"}
    assert package.verify_all() == []


def test_sdxl_build_ort_engines_draw_what_the_exported_graphs_draw(tiny_xl_package: Path, tmp_path: Path) -> None:
    from diffship.engines.ort.build import build_ort_engines
    from diffship.runtime import Pipeline

    package_path = tmp_path / "tiny-xl"
    shutil.copytree(tiny_xl_package, package_path)
    build_ort_engines(package_path)
    package = ModelPackage.open(package_path)
    built_sets = [name for name in package.manifest.engines if name.startswith("ort-")]
    assert built_sets
    # The legacy (TorchScript) export computes SDPA's scale from q's shape; every attention is fused all the same.
    exported = onnx.load(str(package.path(package.variant("unet", "fp32").onnx)), load_external_data=False)
    softmaxes = sum(node.op_type == "Softmax" for node in exported.graph.node)
    assert package.manifest.engines[built_sets[0]].components["unet"].fused_attention == softmaxes > 0
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 12)).astype(np.float32)
    call = dict(prompt="a lighthouse at dusk", negative_prompt="fog", num_inference_steps=3, guidance_scale=5.0,
                height=64, width=96, latents=latents, seed=1)
    with Pipeline.from_package(package_path, backend="ort", engine_set=built_sets[0], device="cpu") as built, \
            Pipeline.from_package(tiny_xl_package, backend="ort", device="cpu") as plain:
        assert built.engines["text_encoder_2"].spec.outputs[1].name == "text_embeds"
        difference = np.abs(built(**call).images[0].astype(int) - plain(**call).images[0].astype(int)).max()
    assert difference <= 2, f"max pixel difference {difference}/255"


def _refiner_copy(tiny_xl_refiner_package: Path, tmp_path: Path) -> Path:
    """The refiner as a package exported before this diffship: its manifest in schema 2, as that exporter wrote it
    (tests/data/manifests-v2), so no vocabulary size is recorded and the builders must find the tokenizer's."""
    package_path = tmp_path / "tiny-xl-refiner"
    shutil.copytree(tiny_xl_refiner_package, package_path)
    # What the defect tripped on: a refiner has only its second tokenizer.
    assert not (package_path / "tokenizer").exists() and (package_path / "tokenizer_2" / "vocab.json").is_file()
    manifest = json.loads((package_path / "manifest.json").read_text(encoding="utf-8"))
    written_by_v2 = json.loads((V2_MANIFESTS / "tiny-xl-refiner.json").read_text(encoding="utf-8"))
    manifest.update(schema_version=2, constants=written_by_v2["constants"])
    (package_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert all(e.vocab_size is None for e in ModelPackage.open(package_path).constants.text_encoders)
    return package_path


def test_sdxl_refiner_build_ort_engines_run_image_to_image(tiny_xl_refiner_package: Path, tmp_path: Path) -> None:
    # The defect: build-ort on a refiner ended in FileNotFoundError for tokenizer/vocab.json.
    from PIL import Image

    from diffship.engines.ort.build import build_ort_engines
    from diffship.runtime import Pipeline

    package_path = _refiner_copy(tiny_xl_refiner_package, tmp_path)
    outcome = build_ort_engines(package_path)
    package = ModelPackage.open(package_path)
    assert {c.component for c in outcome.components} == set(package.manifest.components)
    assert all(c.verification is not None and c.verification.verification.passed for c in outcome.components)
    assert package.verify_all() == []
    rng = np.random.default_rng(5)
    picture = Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))
    call = dict(prompt="a lighthouse at dusk", negative_prompt="fog", image=picture, strength=0.6,
                num_inference_steps=4, guidance_scale=5.0, seed=2)
    with Pipeline.from_package(package_path, backend="ort", engine_set=outcome.engine_set, device="cpu") as built, \
            Pipeline.from_package(tiny_xl_refiner_package, backend="ort", device="cpu") as plain:
        assert f"engines/{outcome.engine_set}/" in str(built.engines["unet"].path)  # type: ignore[attr-defined]
        made = built(**call).images[0]
        difference = np.abs(made.astype(int) - plain(**call).images[0].astype(int)).max()
    assert made.shape == (64, 96, 3) and difference <= 2, f"max pixel difference {difference}/255"


def test_sdxl_refiner_rtx_build_converts_to_fp16_and_builds(tiny_xl_refiner_package: Path, tmp_path: Path) -> None:
    # The same defect in the fp16 conversion, which a refiner exported in fp32 only goes through.
    pytest.importorskip("tensorrt_rtx")
    from diffship.engines.tensorrt.build import BuildRequest, build_engines
    from diffship.engines.tensorrt.sets import default_shape_request

    package_path = _refiner_copy(tiny_xl_refiner_package, tmp_path)
    constants = ModelPackage.open(package_path).constants
    outcome = build_engines(BuildRequest(package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm86",)),
                                         default_shape_request(constants)))
    assert outcome.engine_set == "trt-rtx-sm86-fp16"
    package = ModelPackage.open(package_path)
    engine_set = package.manifest.engines[outcome.engine_set]
    assert sorted(engine_set.components) == sorted(package.manifest.components)
    routes = {c.component: c.details.route for c in outcome.components if c.details is not None}
    assert routes == {"text_encoder_2": "fp16 (converted from fp32)", "unet": "fp16 (converted from fp32)",
                      "vae_decoder": "fp32 export (force_upcast)", "vae_encoder": "fp32 export (force_upcast)"}
    for component in ("text_encoder_2", "unet"):
        verification = package.variant(component, "fp16").verification
        assert verification["passed"] and verification["converted_from"] == "fp32"
    assert package.verify_all() == []
