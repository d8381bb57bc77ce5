"""Streamed weights (how full-size SDXL fits in memory): the graph traced without its parameters, each parameter written
from the torch module into the external-data file. Forced here on ``tiny-xl`` (it happens by itself above 2 GiB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from core.package import ModelPackage
from exporter.onnx_export import ExportOptions
from exporter.package import ExportRequest, export_package


def test_streamed_export_verifies_and_computes_what_the_plain_export_does(tiny_xl_package: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "streamed"
    lines: list[str] = []
    export_package(ExportRequest(out=out, model="tiny-xl", options=ExportOptions(exporter="legacy", stream_weights=True)),
                   on_progress=lines.append)
    assert sum("verified" in line for line in lines) == 5  # every component, against torch
    streamed, plain = ModelPackage.open(out), ModelPackage.open(tiny_xl_package)
    assert streamed.verify_all() == []
    graph = streamed.path(streamed.variant("unet", "fp32").onnx)
    model = onnx.load(str(graph), load_external_data=False)
    assert [i.name for i in model.graph.input] == [t.name for t in streamed.variant("unet", "fp32").spec.inputs]
    # The weights live in the data file, not in the graph.
    assert graph.stat().st_size < graph.with_name("model.onnx.data").stat().st_size / 5
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 8, 12), dtype=np.float32),
             "timestep": np.array([10.0, 900.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, 77, 96), dtype=np.float32),
             "text_embeds": rng.standard_normal((2, 40), dtype=np.float32),
             "time_ids": np.array([[64, 96, 0, 0, 64, 96]] * 2, np.float32)}
    outputs = [ort.InferenceSession(str(package.path(package.variant("unet", "fp32").onnx)),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)[0]
               for package in (streamed, plain)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
