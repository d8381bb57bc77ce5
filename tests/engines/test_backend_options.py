"""Each backend's own options (engines/backend.py ``Backend.options``): built from what the user asked, and a setting
the backend does not take refused with the reason, never silently ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffship.core.package import ModelPackage
from diffship.engines.backend import OpenRequest, OpenSettings, open_engines
from diffship.engines.errors import EngineError
from diffship.engines.ort import OrtBackend, OrtOptions
from diffship.engines.tensorrt import TensorRTBackend, TrtOptions
from diffship.runtime import Pipeline
from tests.fakes import write_package


@pytest.mark.parametrize("settings,fragment", [
    (OpenSettings(threads=4), "takes no thread count \\(threads=4\\).*--backend ort"),
    (OpenSettings(device="cpu"), "does not run on device 'cpu'.*'auto' or 'cuda'"),
    (OpenSettings(options=OrtOptions()), "takes TrtOptions, not OrtOptions"),
])
def test_tensorrt_refuses_what_it_does_not_take(settings: OpenSettings, fragment: str) -> None:
    with pytest.raises(EngineError, match=fragment):
        TensorRTBackend().options(settings)


def test_tensorrt_takes_cuda_graphs_on_the_gpu() -> None:
    backend = TensorRTBackend()
    assert backend.options(OpenSettings()) == TrtOptions(cuda_graphs=False)
    assert backend.options(OpenSettings(device="cuda", cuda_graphs=True)) == TrtOptions(cuda_graphs=True)
    assert backend.options(OpenSettings(options=TrtOptions(), cuda_graphs=True)) == TrtOptions(cuda_graphs=True)


def test_onnx_runtime_takes_every_generic_setting_and_its_own_options_whole() -> None:
    backend = OrtBackend()
    assert backend.options(OpenSettings()) == OrtOptions(device="auto")
    assert backend.options(OpenSettings(device="cpu", threads=2)) == OrtOptions(device="cpu", threads=2)
    # A whole OrtOptions overrides device and threads; cuda_graphs adds to its own.
    given = OrtOptions(device="cuda", prebuilt=False)
    assert backend.options(OpenSettings(device="cpu", threads=3, cuda_graphs=True, options=given)) == OrtOptions(
        device="cuda", prebuilt=False, cuda_graph=True)
    with pytest.raises(EngineError, match="takes OrtOptions, not TrtOptions"):
        backend.options(OpenSettings(options=TrtOptions()))
    with pytest.raises(EngineError, match="unknown ONNX Runtime device 'gpu'"):
        backend.options(OpenSettings(device="gpu"))


def test_a_request_carrying_another_backends_options_is_refused(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    with pytest.raises(EngineError, match="the ort backend takes OrtOptions, not TrtOptions"):
        open_engines(ModelPackage.open(package), ["unet"], "ort", OpenRequest(options=TrtOptions()))


def test_pipeline_on_tensorrt_refuses_threads_before_opening_anything(tmp_path: Path) -> None:
    # The issue: --threads on TensorRT was silently ignored.
    package = write_package(tmp_path / "pkg")
    with pytest.raises(EngineError, match="trt backend takes no thread count"):
        Pipeline.from_package(package, backend="trt", threads=2)
    with pytest.raises(EngineError, match="trt backend does not run on device 'cpu'"):
        Pipeline.from_package(package, backend="trt", device="cpu")
