"""The TensorRT runtime backend: clear refusals without a GPU here; end-to-end checks on a GPU (marked ``gpu``)."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffship.core.package import ModelPackage
from diffship.engines.errors import EngineError
from diffship.runtime import Pipeline
from tests.conftest import images_alone_and_from_threads


@pytest.fixture(scope="module")
def package_with_engines(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorrt_rtx")
    from diffship.core.profiles import shape_request
    from diffship.core.specs import BuildConfig, Range
    from diffship.engines.tensorrt.api import local_gpu_arch
    from diffship.engines.tensorrt.build import BuildRequest, build_engines

    package = tmp_path_factory.mktemp("trt-run") / "tiny"
    shutil.copytree(tiny_package, package)
    arch = local_gpu_arch()
    archs = (arch,) if arch and arch in ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121") else ("sm89",)
    constants = ModelPackage.open(package).constants
    # Without a GPU only the refusal runs, and any engine set shows it: one small component saves CI 20 s.
    components = None if arch else ("text_encoder",)
    build_engines(BuildRequest(
        package, BuildConfig(backend="trt-rtx", precision="fp16", archs=archs),
        shape_request(constants, Range(1, 1, 3), Range(64, 64, 128), Range(64, 64, 128)), components=components))
    return package


def test_trt_backend_without_gpu_says_so(package_with_engines: Path) -> None:
    from diffship.engines.tensorrt.api import local_gpu_arch

    if local_gpu_arch() is not None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="NVIDIA GPU"):
        Pipeline.from_package(package_with_engines, backend="trt")


def test_trt_backend_without_engines_says_how_to_build(tiny_package: Path) -> None:
    with pytest.raises(EngineError, match="build-trt"):
        Pipeline.from_package(tiny_package, backend="trt")


def _require_runnable_engines() -> None:
    from diffship.engines.tensorrt.api import RTX_ARCHS, local_gpu_arch

    arch = local_gpu_arch()
    if arch not in RTX_ARCHS:
        pytest.skip(f"TensorRT-RTX engines do not run on this GPU ({arch}; it targets {', '.join(RTX_ARCHS)}) and "
                    "these tests build with TensorRT-RTX")


@pytest.mark.gpu
def test_rtx_engines_on_a_gpu_rtx_does_not_target_are_refused_with_the_reason(package_with_engines: Path) -> None:
    from diffship.engines.tensorrt.api import RTX_ARCHS, local_gpu_arch

    arch = local_gpu_arch()
    if arch in RTX_ARCHS:
        pytest.skip(f"this GPU ({arch}) is a TensorRT-RTX target")
    engine_set = next(iter(ModelPackage.open(package_with_engines).manifest.engines))
    with pytest.raises(EngineError) as refused:
        Pipeline.from_package(package_with_engines, backend="trt", engine_set=engine_set)
    print(f"{arch}: {refused.value}")  # the library's own words, for the record (pytest -s)
    assert re.search("cannot run here|could not deserialize", str(refused.value)), refused.value


@pytest.mark.gpu
def test_trt_engines_match_onnxruntime_fp32_end_to_end(package_with_engines: Path) -> None:
    _require_runnable_engines()
    arguments = {"prompt": ["a red fox", "a cat"], "num_inference_steps": 10, "seed": 3, "height": 64, "width": 128}
    with Pipeline.from_package(package_with_engines, backend="ort", precision="fp32", device="cpu") as reference:
        expected = np.stack(reference(**arguments).images).astype(np.float64)
    with Pipeline.from_package(package_with_engines, backend="trt") as pipe:
        actual = np.stack(pipe(**arguments).images).astype(np.float64)
    mse = float(np.mean((actual - expected) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    assert psnr >= 30.0, psnr


@pytest.mark.gpu
def test_trt_engine_refuses_shapes_outside_its_profile(package_with_engines: Path) -> None:
    _require_runnable_engines()
    with Pipeline.from_package(package_with_engines, backend="trt") as pipe:
        with pytest.raises(Exception, match="outside"):
            pipe("x", height=256, width=256, num_inference_steps=1)


class PlanTensors:
    """What a deserialized plan reports of its I/O (the part of ICudaEngine check_io reads); no GPU deserializes here."""

    def __init__(self, trt, tensors: dict[str, tuple[str, str]]) -> None:
        self.trt, self.tensors = trt, list(tensors.items())
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index][0]

    def get_tensor_mode(self, name: str):
        mode = dict(self.tensors)[name][0]
        return self.trt.TensorIOMode.INPUT if mode == "input" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return getattr(self.trt.DataType, dict(self.tensors)[name][1])


def test_a_plan_whose_tensors_differ_from_the_spec_is_refused(tiny_package: Path) -> None:
    trt = pytest.importorskip("tensorrt_rtx")
    from diffship.engines.tensorrt import api
    from diffship.engines.tensorrt.api import load_library
    from diffship.engines.tensorrt.engine import check_io

    api.bind(load_library("trt-rtx"))
    spec = ModelPackage.open(tiny_package).variant("unet", "fp16").spec
    good = {"sample": ("input", "HALF"), "timestep": ("input", "FLOAT"), "encoder_hidden_states": ("input", "HALF"),
            "model_output": ("output", "HALF")}
    check_io(PlanTensors(trt, good), spec, "unet")
    for changed in ({"sample": ("input", "FLOAT")}, {"model_output": ("input", "HALF")}, {"extra": ("input", "HALF")}):
        with pytest.raises(EngineError, match="do not match the manifest"):
            check_io(PlanTensors(trt, {**good, **changed}), spec, "unet")


@pytest.mark.gpu
def test_trt_pipeline_from_several_threads_gives_the_images_of_one_by_one(package_with_engines: Path) -> None:
    _require_runnable_engines()
    with Pipeline.from_package(package_with_engines, backend="trt") as pipe:
        calls = [{"prompt": f"a fox {k}", "seed": k, "num_inference_steps": 3, "height": 64, "width": 64}
                 for k in range(4)]
        alone, together = images_alone_and_from_threads(pipe, calls)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(alone, together, strict=True))
