"""build-ort --precision int8: the UNet statically quantized for the CPU, calibrated on the package's own runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from diffship.core.package import ModelPackage
from diffship.engines.errors import EngineError
from diffship.engines.ort import cpu_tag
from diffship.engines.ort.build import OrtBuilder, build_ort_engines
from diffship.engines.ort.quantize import nodes_to_quantize
from diffship.runtime import Pipeline
from diffship.runtime.calibration import CalibrationPlan, record_unet_inputs
from diffship.runtime.lora import LoraError

PLAN = CalibrationPlan(steps=6)


@pytest.fixture(scope="module")
def int8_package(ort_built_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fp32-built ``tiny`` with an int8 UNet (the other components left to the fp32 export)."""
    package = tmp_path_factory.mktemp("int8") / "tiny"
    shutil.copytree(ort_built_package, package)
    build_ort_engines(package, "int8", ["unet"], calibration=lambda: record_unet_inputs(package, PLAN),
                      calibration_key=PLAN.key())
    return package


def test_int8_build_quantizes_the_spatial_stream_and_keeps_its_ends_in_float(int8_package: Path) -> None:
    engine_set = ModelPackage.open(int8_package).manifest.engines[f"ort-{cpu_tag()}-int8"]
    assert engine_set.precision == "int8" and set(engine_set.components) == {"unet"}
    report = json.loads((int8_package / engine_set.components["unet"].report).read_text())
    assert report["int8"]["quantized_nodes"] > 100
    assert report["int8"]["left_in_float"]["first_and_last_convolution"] == 2
    assert report["int8"]["calibration_inputs"] > 0
    assert report["verification"]["passed"] and report["verification"]["bar"].startswith("rel L2 <= 0.15")
    # The saved graph runs integer kernels: ONNX Runtime fused the QDQ pairs when it optimised it.
    graph = onnx.load(str(int8_package / engine_set.components["unet"].graph), load_external_data=False)
    ops = {node.op_type for node in graph.graph.node}
    assert {"QLinearConv", "QLinearMatMul"} <= ops


def test_nodes_to_quantize_leaves_out_conv_in_and_the_text_projections(tiny_package: Path) -> None:
    model = onnx.load(str(tiny_package / "onnx" / "unet" / "model.onnx"), load_external_data=False)
    chosen, _ = nodes_to_quantize(model)
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv" and "sample" in n.input)
    assert first_conv.name not in chosen
    reads_text = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                  and "encoder_hidden_states" in n.input]
    assert reads_text and not set(reads_text) & set(chosen)


def test_int8_runs_only_when_asked_for(int8_package: Path, tiny_package: Path) -> None:
    default = Pipeline.from_package(int8_package)
    assert default.precision == "fp32"  # an int8 set in the package is never picked by default
    default.close()
    int8 = Pipeline.from_package(int8_package, precision="int8")
    fp32 = Pipeline.from_package(int8_package, precision="fp32")
    ours = np.stack(int8("a red fox", num_inference_steps=4, seed=3).images).astype(np.float32)
    theirs = np.stack(fp32("a red fox", num_inference_steps=4, seed=3).images).astype(np.float32)
    assert int8.precision == "int8" and np.isfinite(ours).all()
    assert np.abs(ours - theirs).max() > 0  # the quantized UNet really ran
    # Integer kernels need their weights prepacked (without, the sd15 UNet step took 2.3 s instead of 1.3 s); the
    # fp32 build-ort graphs run unpacked, memory-mapped.
    assert "session.disable_prepacking" not in int8.engines["unet"].options.session_config
    assert fp32.engines["unet"].options.session_config.get("session.disable_prepacking") == "1"
    with pytest.raises(LoraError, match="int8"):
        int8.set_loras([("nothing.safetensors", 1.0)])
    int8.close()
    fp32.close()
    with pytest.raises(EngineError, match="build-ort .*--precision int8"):
        Pipeline.from_package(tiny_package, precision="int8")


def test_int8_is_refused_for_the_cuda_target_and_without_calibration(tiny_package: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="CPU provider"):
        OrtBuilder("int8", "cuda")
    package = tmp_path / "tiny"
    shutil.copytree(tiny_package, package)
    with pytest.raises(EngineError, match="calibration"):
        build_ort_engines(package, "int8", ["unet"])
    assert not (package / "engines" / f"ort-{cpu_tag()}-int8").exists()  # nothing half-written left behind
