"""The ONNX Runtime adapter: feeds checked against the manifest's specs, files checked against their sha256."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from diffship.core.errors import PackageError
from diffship.core.package import ModelPackage
from diffship.engines.backend import open_engines
from diffship.engines.errors import EngineError, FeedError, MissingLibraryError
from diffship.engines.ort import OrtEngine, OrtOptions, cuda_available


@pytest.fixture(scope="module")
def unet(tiny_package: Path) -> OrtEngine:
    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    return OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(threads=1))


def feeds(batch: int = 1, size: int = 8) -> dict[str, np.ndarray]:
    return {
        "sample": np.zeros((batch, 4, size, size), np.float32),
        "timestep": np.full((batch,), 500, np.float32),
        "encoder_hidden_states": np.zeros((batch, 77, 32), np.float32),
    }


def test_engine_runs_and_returns_named_outputs(unet: OrtEngine) -> None:
    with unet as engine:
        outputs = engine(feeds(2, 16))
    assert set(outputs) == {"model_output"} and outputs["model_output"].shape == (2, 4, 16, 16)
    assert unet.max_batch() is None


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda f: f.pop("timestep"), "missing timestep"),
        (lambda f: f.update(extra=np.zeros(1, np.float32)), "unexpected extra"),
        (lambda f: f.update(sample=f["sample"].astype(np.float64)), "'sample' must be float32, got float64"),
        (lambda f: f.update(sample=np.zeros((1, 3, 8, 8), np.float32)), "'sample': dimension 1 must be 4"),
        (lambda f: f.update(sample=np.zeros((1, 4, 8), np.float32)), "'sample': expected 4 dimensions"),
        (lambda f: f.update(timestep=np.zeros((2,), np.float32)), "'timestep' has batch=2 but 'sample' has batch=1"),
        (lambda f: f.update(sample=[[1.0]]), "must be a numpy array"),
    ],
)
def test_bad_feeds_name_the_offending_input(unet: OrtEngine, change, fragment: str) -> None:
    bad = feeds()
    change(bad)
    with pytest.raises(FeedError) as raised:
        unet(bad)
    assert fragment in str(raised.value)


def test_open_engines_refuses_files_whose_sha256_differs(tiny_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    with open(copy / "onnx" / "vae_decoder" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PackageError, match="sha256"):
        open_engines(ModelPackage.open(copy), ["text_encoder", "vae_decoder"])


def test_cuda_device_without_onnxruntime_gpu_names_the_extra(tiny_package: Path) -> None:
    if cuda_available():
        pytest.skip("onnxruntime-gpu is installed here")
    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    with pytest.raises(MissingLibraryError, match=r"diffship\[ort-gpu\]"):
        OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cuda"))


def test_auto_device_falls_back_to_cpu(tiny_package: Path) -> None:
    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    engine = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="auto"))
    assert engine.device == ("cuda" if cuda_available() else "cpu")


@pytest.mark.gpu
def test_cuda_provider_with_io_binding_matches_cpu(tiny_package: Path) -> None:
    if not cuda_available():
        pytest.skip("onnxruntime-gpu is not installed")
    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    cpu = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cpu"))
    gpu = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cuda"))
    rng = np.random.default_rng(0)
    inputs = feeds(2, 16)
    inputs["sample"] = rng.standard_normal(inputs["sample"].shape).astype(np.float32)
    np.testing.assert_allclose(gpu(inputs)["model_output"], cpu(inputs)["model_output"], atol=1e-3)


@pytest.mark.gpu
def test_cuda_graph_replays_follow_new_inputs_and_shapes(tiny_package: Path) -> None:
    if not cuda_available():
        pytest.skip("onnxruntime-gpu is not installed")
    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    plain = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cuda"))
    graphed = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cuda", cuda_graph=True,
                                                                             cuda_graph_shapes=2))
    rng = np.random.default_rng(1)
    for batch, size in ((2, 16), (2, 16), (1, 8), (2, 16), (3, 24)):
        inputs = feeds(batch, size)
        inputs["sample"] = rng.standard_normal(inputs["sample"].shape).astype(np.float32)
        inputs["encoder_hidden_states"] = rng.standard_normal(inputs["encoder_hidden_states"].shape).astype(np.float32)
        # New values at an already captured shape must reach the graph (fixed buffers updated, not stale).
        np.testing.assert_allclose(graphed(inputs)["model_output"], plain(inputs)["model_output"], atol=1e-4)
    assert len(graphed._graphs) == 2  # least recently used shapes dropped
    graphed.close()
    plain.close()


def test_cuda_graph_on_the_cpu_is_refused() -> None:
    with pytest.raises(EngineError, match="CUDA graphs need the CUDA provider"):
        OrtOptions(device="cpu", cuda_graph=True)


def test_cuda_provider_options_take_component_defaults_and_let_the_caller_override_them() -> None:
    from diffship.engines.ort.engine import cuda_provider_options

    plain = OrtOptions(device="cuda")
    assert cuda_provider_options("vae_decoder", False, plain)["cudnn_conv_algo_search"] == "HEURISTIC"
    assert "cudnn_conv_algo_search" not in cuda_provider_options("unet", False, plain)  # ONNX Runtime's own search
    assert "prefer_nhwc" not in cuda_provider_options("unet", False, plain)
    graphed = cuda_provider_options("unet", True, plain)
    assert graphed["prefer_nhwc"] == "1" and graphed["enable_cuda_graph"] == "1"
    own = OrtOptions(device="cuda", tf32=True, cuda_provider_options={"cudnn_conv_algo_search": "EXHAUSTIVE"})
    chosen = cuda_provider_options("vae_decoder", False, own)
    assert chosen["cudnn_conv_algo_search"] == "EXHAUSTIVE" and chosen["use_tf32"] == "1"


def test_overrides_reach_convolutions_that_onnx_runtime_layout_optimiser_would_drop(tiny_package: Path) -> None:
    """ONNX Runtime's CPU layout optimiser (level "all") reorders convolution filters from the graph's own weights
    and drops overrides of them; OrtEngine stops at "extended" when it has overrides. If the first assertion fails,
    ONNX Runtime keeps overrides at "all" now and the workaround in OrtEngine can go."""
    from diffship.core.weights import WeightMap
    from diffship.engines.onnx.session import open_session

    package = ModelPackage.open(tiny_package)
    variant = package.variant("unet", "fp32")
    assert variant.weight_map is not None
    slot = WeightMap.read(package.path(variant.weight_map), variant.weight_map).slots["conv_in"]
    overrides = {slot.initializer: np.zeros(slot.dims, slot.dtype)}
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "timestep": np.array([10.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((1, 77, 32)).astype(np.float32)}
    path = package.path(variant.onnx)
    base = open_session(path).run(None, feeds)[0]
    assert np.array_equal(open_session(path, optimization="all", initializers=overrides).run(None, feeds)[0], base)
    changed = OrtEngine(path, variant.spec, OrtOptions(device="cpu"), overrides)(feeds)["model_output"]
    expected = open_session(path, optimization="disable", initializers=overrides).run(None, feeds)[0]
    assert not np.allclose(changed, base) and np.allclose(changed, expected, atol=1e-5)
