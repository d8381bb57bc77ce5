"""The diffusers side of the parity suites: StableDiffusionPipeline on the tiny models' ``save_pretrained`` folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffship.bench.reference import Reference


@pytest.fixture(scope="session")
def reference_pipelines(pretrained_dirs: dict[str, Path]) -> dict[str, Reference]:
    diffusers = pytest.importorskip("diffusers")
    references = {}
    for name, folder in pretrained_dirs.items():
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None).to("cpu")
        pipe.set_progress_bar_config(disable=True)
        # Every swap starts from the scheduler as loaded, as a user's would.
        references[name] = Reference(pipe, pipe.scheduler.config, "cpu", "fp32", 8)
    return references


def sdxl_reference(folder: Path, pipeline_class: str = "StableDiffusionXLPipeline") -> Reference:
    """diffusers' SDXL pipeline ``pipeline_class`` from a ``save_pretrained`` folder, fp32 on the CPU, no watermark."""
    diffusers = pytest.importorskip("diffusers")
    pipe = getattr(diffusers, pipeline_class).from_pretrained(str(folder), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return Reference(pipe, pipe.scheduler.config, "cpu", "fp32", 8)
