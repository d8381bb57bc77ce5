"""``run_ensemble``: SDXL's base -> refiner hand-off on the tiny SDXL packages, against the two calls made by hand
through ``Pipeline``'s public API; the base is closed before the refiner opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diffship.runtime import Pipeline
from diffship.runtime.ensemble import DEFAULT_DENOISING_END, run_ensemble

ARGUMENTS = {"num_inference_steps": 5, "guidance_scale": 5.0, "seed": 3, "height": 64, "width": 96,
             "negative_prompt": "blurry", "aesthetic_score": 7.0, "target_size": (64, 96)}


def test_run_ensemble_equals_the_two_calls_by_hand(tiny_xl_package: Path, tiny_xl_refiner_package: Path) -> None:
    prompts = ["a red fox", "a cat"]
    with Pipeline.from_package(tiny_xl_package) as base:
        handed = base(prompts, num_images_per_prompt=2, output_type="latent", denoising_end=0.6,
                      **{k: v for k, v in ARGUMENTS.items() if k != "aesthetic_score"})
    with Pipeline.from_package(tiny_xl_refiner_package) as refiner:
        expected = refiner(prompts, num_images_per_prompt=2, image=handed.latents, denoising_start=0.6,
                           num_inference_steps=5, guidance_scale=5.0, seed=3, negative_prompt="blurry",
                           aesthetic_score=7.0)

    result = run_ensemble(Pipeline.from_package(tiny_xl_package),
                          lambda: Pipeline.from_package(tiny_xl_refiner_package), prompts, ARGUMENTS,
                          images_per_prompt=2, denoising_end=0.6)
    assert result.handoff == 0.6 and len(result.refined.images) == 4
    for ours, theirs in zip(result.refined.images, expected.images, strict=True):
        assert np.array_equal(ours, theirs)
    assert np.array_equal(result.base.latents, handed.latents)
    assert [p["seed"] for p in result.parameters] == [3, 4, 5, 6]
    assert all(p["base"]["family"] == "sdxl" and p["model"]["family"] == "sdxl-refiner" for p in result.parameters)


def test_run_ensemble_closes_the_base_before_the_refiner_opens(tiny_xl_package: Path,
                                                                tiny_xl_refiner_package: Path) -> None:
    events: list[str] = []
    base = Pipeline.from_package(tiny_xl_package)
    close = base.close
    base.close = lambda: (events.append("base closed"), close())[1]  # type: ignore[method-assign]

    def open_refiner() -> Pipeline:
        events.append("refiner opened")
        return Pipeline.from_package(tiny_xl_refiner_package)

    result = run_ensemble(base, open_refiner, ["a red fox"], {"num_inference_steps": 4, "seed": 1})
    assert events == ["base closed", "refiner opened"]
    assert result.handoff == DEFAULT_DENOISING_END


def test_run_ensemble_refuses_a_base_that_hands_off_nothing(tmp_path: Path) -> None:
    import pytest

    from diffship.engines.backend import register_backend
    from diffship.runtime.errors import PipelineInputError
    from tests.fakes import NumpyBackend, write_package

    register_backend("numpy-ensemble", NumpyBackend)
    base = Pipeline.from_package(write_package(tmp_path / "sd1"), backend="numpy-ensemble")
    opened: list[str] = []
    with pytest.raises(PipelineInputError, match="hand-off takes an SDXL base package; .* is sd1"):
        run_ensemble(base, lambda: opened.append("refiner") or base, ["a fox"])
    assert opened == [] and all(engine.closed for engine in base.engines.values())  # type: ignore[attr-defined]
