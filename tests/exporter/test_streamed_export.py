"""Streamed weights (how full-size SDXL fits in memory): the graph traced without its parameters, each parameter written
from the torch module into the external-data file. Forced here on ``tiny-xl`` (it happens by itself above 2 GiB,
whichever exporter was asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from diffship.core.package import ModelPackage
from diffship.exporter.onnx_export import ExportOptions
from diffship.exporter.package import ExportRequest, export_package


def test_streamed_export_verifies_and_computes_what_the_plain_export_does(tiny_xl_package: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "streamed"
    lines: list[str] = []
    export_package(ExportRequest(out=out, model="tiny-xl", options=ExportOptions(stream_weights=True)),
                   on_progress=lines.append)
    assert sum("verified" in line for line in lines) == 5  # every component, against torch
    assert sum("weights streamed, legacy tracer" in line for line in lines) == 5  # though dynamo is the default
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


def test_streamed_fp16_unet_meets_the_fp16_bar(tmp_path: Path) -> None:
    # Full-size SDXL in fp16 streams its 5 GB UNet (its fp16 text encoders stay under the limit, on dynamo).
    pytest.importorskip("onnxruntime")
    import torch

    from diffship.core.families import get_family
    from diffship.core.metrics import random_feeds, verification_dims
    from diffship.core.specs import dim_multiples
    from diffship.exporter.families import family_exporter
    from diffship.exporter.onnx_export import export_component
    from diffship.exporter.package import _example_dims, _half_copy
    from diffship.exporter.sources import load_source
    from diffship.exporter.verify import verify_component

    source = load_source("tiny-xl")
    try:
        constants = family_exporter(source.family).derive_constants(source)
        spec = get_family(source.family).specs(constants)["unet"]
        reference = family_exporter(source.family).boundary_module("unet", source)
        feeds = random_feeds(spec, _example_dims(constants), np.random.default_rng(0), 1)
        example = tuple(torch.from_numpy(feeds[t.name]) for t in spec.inputs)
        example = tuple(x.half() if x.is_floating_point() and t.name != "timestep" else x
                        for t, x in zip(spec.inputs, example, strict=True))
        half_spec = spec.with_float_dtype("float16")
        files = export_component(_half_copy(reference), half_spec, example, tmp_path, ExportOptions(stream_weights=True),
                                 dim_multiples(constants), file_name="model_fp16.onnx")
        verification = verify_component(files[0], reference, spec, "fp16", verification_dims(constants), 1)
    finally:
        source.close()
    assert [f.name for f in files] == ["model_fp16.onnx", "model_fp16.onnx.data"]
    assert verification.passed, verification.describe()
