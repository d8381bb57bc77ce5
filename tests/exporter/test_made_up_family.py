"""The made-up family of tests/made_up, exported by the real exporter from its wrapper module alone and run on ONNX
Runtime by the unchanged ``Pipeline``: the images match the same pipeline run on the torch modules themselves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffship.engines.backend import register_backend  # noqa: E402
from diffship.exporter.package import ExportRequest, export_source  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from tests.fakes import Function, NumpyBackend  # noqa: E402
from tests.made_up import description, exporter, text_side  # noqa: E402
from tests.made_up.description import NAME  # noqa: E402


def torch_functions(seed: int) -> dict[str, Function]:
    """The family's torch modules as the fake engines' functions: the reference the ONNX graphs must match."""
    source = exporter.make_source(seed)
    modules = {"text_encoder": (source.text_encoders["text_encoder"], "hidden_states"),
               "unet": (source.unet, "model_output"), "vae_decoder": (source.vae, "sample")}

    def wrap(module: torch.nn.Module, output: str) -> Function:
        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                return {output: module(*(torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values())).numpy()}
        return run

    return {component: wrap(module, output) for component, (module, output) in modules.items()}


@pytest.mark.export
def test_made_up_family_exports_verified_graphs_that_draw_what_torch_draws(tmp_path: Path) -> None:
    description.register()
    text_side.register()
    exporter.register()
    source = exporter.make_source(seed=0)
    try:
        result = export_source(source, ExportRequest(out=tmp_path / NAME))
    finally:
        source.close()
    assert [r.component for r in result.reports] == ["text_encoder", "unet", "vae_decoder"]
    assert all(r.verification.passed for r in result.reports)
    register_backend("torch-pooled-toy", lambda: NumpyBackend(functions=torch_functions(seed=0)))
    arguments = {"num_inference_steps": 4, "guidance_scale": 3.0, "seed": 3, "negative_prompt": "blurry"}
    with Pipeline.from_package(tmp_path / NAME, backend="ort", device="cpu") as pipe:
        ours = pipe(["a red square", "a blue circle"], **arguments)
    with Pipeline.from_package(tmp_path / NAME, backend="torch-pooled-toy") as pipe:
        reference = pipe(["a red square", "a blue circle"], **arguments)
    for image, expected in zip(ours.images, reference.images, strict=True):
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 2
    assert np.abs(ours.images[0].astype(int) - ours.images[1].astype(int)).max() > 10
