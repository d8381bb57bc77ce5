"""The guidance schedule end to end: runtime.Pipeline (ONNX Runtime, CPU) with ``guidance_cutoff`` /
``guidance_interval`` against diffusers' pipelines run with its own CFG cutoff callbacks (``SDCFGCutoffCallback``,
``SDXLCFGCutoffCallback``, which also drops the unconditional half of SDXL's added conditioning), same injected draws,
bar 2/255 in fp32 (docs/design.md, "Parity bars").

diffusers' callbacks keep the last row of the embeddings (``prompt_embeds[-1:]``), which is the conditional side of
a one-image call only: the cases here are one image each, as the callbacks support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
callbacks = pytest.importorskip("diffusers.callbacks")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from tests.parity.conftest import sdxl_reference  # noqa: E402

PROMPT, NEGATIVE = "a red fox in the snow", "blurry"
STEPS = 8
SEED = 31


@pytest.fixture(scope="module")
def tiny(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, backend="ort", device="cpu")


@pytest.fixture(scope="module")
def tiny_xl(tiny_xl_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_xl_package, backend="ort", device="cpu")


@pytest.fixture(scope="module")
def xl_reference(tiny_xl_dir: Path) -> Reference:
    return sdxl_reference(tiny_xl_dir)


def worst_difference(ours: Pipeline, reference: Reference, callback: object, scheduler: str | None,
                     height: int, width: int, **schedule: object) -> int:
    latents = np.random.default_rng(3).standard_normal((1, 4, height // 8, width // 8)).astype(np.float32)
    actual = ours(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0,
                  scheduler=scheduler, height=height, width=width, latents=latents, seed=SEED, **schedule).images[0]
    expected = run_reference(reference, [PROMPT], latents, [SEED], [NEGATIVE], STEPS, 6.0, scheduler,
                             extra={"callback_on_step_end": callback})[0]
    assert actual.shape == expected.shape == (height, width, 3)
    return int(np.abs(actual.astype(int) - expected.astype(int)).max())


def first_unguided(reference: Reference, low: float) -> int:
    """The step index after which an interval (low, inf) stops guiding, from diffusers' own Euler sigmas."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(reference.loaded_scheduler_config)
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas[:STEPS].double().numpy()
    return int(np.sum(sigmas > low)) - 1


@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_sd_guidance_cutoff_matches_diffusers_callback(scheduler: str | None, ratio: float, tiny: Pipeline,
                                                       reference_pipelines: dict[str, Reference]) -> None:
    worst = worst_difference(tiny, reference_pipelines["tiny"], callbacks.SDCFGCutoffCallback(cutoff_step_ratio=ratio),
                             scheduler, 64, 64, guidance_cutoff=ratio)
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_sd_guidance_interval_matches_diffusers_callback_at_the_same_step(
        tiny: Pipeline, reference_pipelines: dict[str, Reference]) -> None:
    reference = reference_pipelines["tiny"]
    low = 1.0
    index = first_unguided(reference, low)
    assert 0 < index < STEPS - 1  # the interval cuts inside the schedule
    worst = worst_difference(tiny, reference, callbacks.SDCFGCutoffCallback(cutoff_step_ratio=None,
                                                                            cutoff_step_index=index),
                             "euler", 64, 64, guidance_interval=(low, 1e9))
    assert worst <= 2, f"max pixel difference {worst}/255"


@pytest.mark.parametrize("scheduler,ratio", [(None, 0.5), ("euler_a", 0.25)])
def test_sdxl_guidance_cutoff_matches_diffusers_callback(scheduler: str | None, ratio: float, tiny_xl: Pipeline,
                                                         xl_reference: Reference) -> None:
    worst = worst_difference(tiny_xl, xl_reference, callbacks.SDXLCFGCutoffCallback(cutoff_step_ratio=ratio),
                             scheduler, 64, 96, guidance_cutoff=ratio)
    assert worst <= 2, f"max pixel difference {worst}/255"


@pytest.mark.export  # its fixture is looked up by name, which the conftest cannot see
@pytest.mark.parametrize("model", ["tiny", "tiny_xl"])
def test_the_cutoff_changes_the_image(model: str, request: pytest.FixtureRequest) -> None:
    # The cases above could pass with a cutoff that did nothing if guidance barely mattered on the tiny models.
    pipe = request.getfixturevalue(model)
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 12)).astype(np.float32)
    full, cut = (pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0, height=64,
                      width=96, latents=latents, seed=SEED, guidance_cutoff=ratio).images[0] for ratio in (1.0, 0.0))
    assert int(np.abs(full.astype(int) - cut.astype(int)).max()) > 8
