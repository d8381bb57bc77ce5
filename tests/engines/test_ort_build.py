"""build-ort: attention fused into MultiHeadAttention, graphs optimised once; the runtime loads them, same images."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from diffship.core.package import ModelPackage
from diffship.engines.backend import OpenRequest, OpenSettings
from diffship.engines.ort import OrtBackend, OrtOptions, cpu_tag
from diffship.engines.ort.build import build_ort_engines, fuse_attention
from diffship.runtime import Pipeline


@pytest.fixture(scope="module")
def built(ort_built_package: Path) -> Path:
    return ort_built_package


def test_fuse_attention_replaces_every_unet_attention(tiny_package: Path) -> None:
    model = onnx.load(str(tiny_package / "onnx" / "unet" / "model.onnx"))
    softmaxes = sum(node.op_type == "Softmax" for node in model.graph.node)
    fused, count = fuse_attention(model)
    assert count == softmaxes > 0
    assert not any(node.op_type == "Softmax" for node in fused.graph.node)
    heads = {a.i for n in fused.graph.node if n.op_type == "MultiHeadAttention" for a in n.attribute if a.name == "num_heads"}
    assert heads == {8}  # the tiny UNet's attention_head_dim (heads, in SD 1.x naming)



def test_fuse_attention_of_a_legacy_export_computes_what_the_graph_did(tiny_v_package: Path, tmp_path: Path) -> None:
    # TorchScript writes SDPA's scale as ops on q's shape, not as a constant: the fused node takes the same default.
    ort = pytest.importorskip("onnxruntime")
    from diffship.engines.onnx.graphs import save_onnx

    source = tiny_v_package / "onnx" / "unet" / "model.onnx"
    model = onnx.load(str(source))
    softmaxes = sum(node.op_type == "Softmax" for node in model.graph.node)
    fused, count = fuse_attention(model)
    assert count == softmaxes > 0
    assert not any(a.name == "scale" for n in fused.graph.node if n.op_type == "MultiHeadAttention" for a in n.attribute)
    save_onnx(fused, tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for path in (source, tmp_path / "model.onnx")]
    hidden = next(i.shape[2] for i in sessions[0].get_inputs() if i.name == "encoder_hidden_states")
    feeds = {"sample": rng.standard_normal((2, 4, 8, 16), dtype=np.float32),
             "timestep": np.array([15.0, 700.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, hidden), dtype=np.float32)}
    plain, rewritten = (session.run(None, feeds)[0] for session in sessions)
    np.testing.assert_allclose(rewritten, plain, rtol=1e-4, atol=1e-5)

def test_build_records_verified_engines_in_the_manifest(built: Path) -> None:
    package = ModelPackage.open(built)
    name = f"ort-{cpu_tag()}-fp32"
    engine_set = package.manifest.engines[name]
    assert engine_set.backend == "ort" and engine_set.target == cpu_tag()
    unet = engine_set.components["unet"]
    assert unet.fused_attention > 0 and unet.files == (unet.graph, *unet.data_files, unet.weight_map)
    report = json.loads(package.path(unet.report).read_text())
    assert report["verification"]["passed"]
    assert engine_set.components["vae_decoder"].fused_attention == 1
    assert package.verify_all() == []


def test_second_build_is_skipped(built: Path) -> None:
    outcome = build_ort_engines(built)
    assert all(c.skipped for c in outcome.components)


def test_runtime_loads_prebuilt_engines_and_makes_the_same_images(built: Path) -> None:
    with Pipeline.from_package(built, device="cpu") as fast, Pipeline.from_package(
        built, ort_options=OrtOptions(device="cpu", prebuilt=False)
    ) as plain:
        assert "engines" in str(fast.engines["unet"].path) and "onnx" in str(plain.engines["unet"].path)
        arguments = {"prompt": ["a red fox", "a cat"], "num_inference_steps": 8, "seed": 4, "height": 64, "width": 128}
        a, b = fast(**arguments).images, plain(**arguments).images
    assert max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b, strict=True)) <= 2


def test_engines_from_another_onnxruntime_are_ignored(built: Path, tmp_path: Path, caplog) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["engines"][f"ort-{cpu_tag()}-fp32"]["library_version"] = "0.0.1"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        pipe = Pipeline.from_package(copy, device="cpu")
    assert "onnx" in str(pipe.engines["unet"].path) and "build-ort again" in caplog.text


def test_parity_holds_with_prebuilt_engines(built: Path, tmp_path: Path) -> None:
    from diffship.bench.parity import parity_report

    report = parity_report(built, ["pndm", "euler_a"], [7.5], tmp_path, steps=6)
    assert report.passed, [c for c in report.cases if not c.passed]


def test_cuda_target_fuses_attention_for_the_cuda_provider_and_the_cpu_ignores_it(built: Path) -> None:
    outcome = build_ort_engines(built, "fp16", target="cuda")
    name = outcome.engine_set
    assert name == "ort-cuda-fp16"
    fused = {c.component: c.entry.fused_attention for c in outcome.components}  # type: ignore[attr-defined]
    assert fused == {"text_encoder": 0, "unet": 20, "vae_decoder": 1, "vae_encoder": 1}
    package = ModelPackage.open(built)
    engine_set = package.manifest.engines[name]
    assert engine_set.target == "cuda" and engine_set.precision == "fp16"
    report = json.loads(package.path(engine_set.components["unet"].report).read_text())
    assert report["verification"]["passed"]  # checked against the exported fp16 graph, at the fp16 bar
    model = onnx.load(str(package.path(engine_set.components["unet"].graph)))
    assert not any(node.domain == "com.microsoft" and node.op_type.startswith("Nchwc") for node in model.graph.node)
    # A session on the CPU takes this CPU's set or the plain export, never the one fused for the CUDA provider.
    backend = OrtBackend()
    request = OpenRequest(precision="fp16", options=backend.options(OpenSettings(device="cpu")))
    chosen = backend.select(package, request).engine_set
    assert chosen is None or chosen.name != name
    assert package.verify_all() == []


def test_the_readmes_fp16_unet_build_works(tiny_package: Path, tmp_path: Path) -> None:
    # `build-ort --precision fp16 --components unet` once always failed: fp16 graphs were held to the fp32 bar.
    package = tmp_path / "tiny"
    shutil.copytree(tiny_package, package)
    outcome = build_ort_engines(package, "fp16", ["unet"])
    check = outcome.components[0].verification
    assert check is not None and check.verification.passed
    assert check.verification.bar.startswith("PSNR")
