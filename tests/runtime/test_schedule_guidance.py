"""The guidance schedule (runtime/schedule_guidance.py): which steps are guided, against diffusers' own CFG cutoff
callbacks and schedulers' sigmas, and what the pipeline does with it over numpy engines (tests/fakes.py): the steps
outside run one batch-1 UNet call per image, a static guided profile still serves them, off is bit-identical,
calls with different schedules never share a loop, and the PNG parameters record it."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from diffship.core.package import ModelPackage
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.schedule_guidance import GuidanceSchedule, parse_interval, step_sigma
from diffship.runtime.schedulers import make_scheduler
from tests.fakes import CONFIGS, NumpyBackend, with_profile, write_package

diffusers = pytest.importorskip("diffusers")
callbacks = pytest.importorskip("diffusers.callbacks")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def open_pipe(package: Path, **profiles: tuple[int, int]) -> Pipeline:
    specs = {c: ModelPackage.open(package).variant(c, "fp32").spec for c in ("text_encoder", "unet", "vae_decoder")}
    backend = NumpyBackend({name: with_profile(specs[name], batch) for name, batch in profiles.items()})
    register_backend("numpy", lambda: backend)
    return Pipeline.from_package(package, backend="numpy")


def diffusers_guided_steps(callback_class: type, count: int, ratio: float) -> list[bool]:
    """Run diffusers' callback as its pipeline does (after each step) and read back which steps were guided."""
    callback = callback_class(cutoff_step_ratio=ratio)
    pipeline = types.SimpleNamespace(num_timesteps=count, _guidance_scale=7.5)
    tensors = {name: np.zeros((2, 1)) for name in callback.tensor_inputs}
    flags = []
    for step in range(count):
        flags.append(pipeline._guidance_scale > 1)
        tensors = callback(pipeline, step, 0, tensors)
    return flags


@pytest.mark.parametrize("count", [1, 2, 5, 6, 7, 20, 50])
@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 0.99, 1.0])
def test_cutoff_guides_the_steps_diffusers_callbacks_guide(count: int, ratio: float) -> None:
    sampler = make_scheduler("ddim", {}, count)
    ours = GuidanceSchedule(cutoff=ratio).guided_steps(sampler, 0, count)
    assert ours == diffusers_guided_steps(callbacks.SDCFGCutoffCallback, count, ratio)
    assert ours == diffusers_guided_steps(callbacks.SDXLCFGCutoffCallback, count, ratio)


def test_cutoff_counts_the_steps_the_call_runs() -> None:
    # Image-to-image from step 4 of 10 runs 6 steps: diffusers' num_timesteps is 6 there.
    sampler = make_scheduler("ddim", {}, 10)
    assert GuidanceSchedule(cutoff=0.5).guided_steps(sampler, 4, 10) == \
        diffusers_guided_steps(callbacks.SDCFGCutoffCallback, 6, 0.5)


@pytest.mark.parametrize("scheduler,diffusers_class", [("euler", "EulerDiscreteScheduler"),
                                                       ("euler_karras", "EulerDiscreteScheduler"),
                                                       ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_step_sigma_is_the_schedulers_own_sigma(scheduler: str, diffusers_class: str) -> None:
    config = (CONFIGS / "tiny" / "scheduler_config.json").read_text(encoding="utf-8")
    import json

    loaded = json.loads(config)
    extra = {"use_karras_sigmas": True} if scheduler.endswith("karras") else {}
    theirs = getattr(diffusers, diffusers_class).from_config({**loaded, **extra})
    theirs.set_timesteps(20)
    ours = make_scheduler(scheduler, loaded, 20)
    sigmas = [step_sigma(ours, i) for i in range(20)]
    np.testing.assert_allclose(sigmas, theirs.sigmas[:20].double().numpy(), rtol=1e-4)


def test_interval_guides_steps_whose_sigma_lies_inside() -> None:
    sampler = make_scheduler("euler", {}, 20)
    sigmas = [step_sigma(sampler, i) for i in range(20)]
    low, high = sigmas[12], sigmas[3]
    flags = GuidanceSchedule(interval=(low, high)).guided_steps(sampler, 0, 20)
    assert flags == [low < sigma <= high for sigma in sigmas]
    assert flags.index(True) == 3 and flags.count(True) == 9  # steps 3..11: (low, high]
    both = GuidanceSchedule(cutoff=0.25, interval=(low, high)).guided_steps(sampler, 0, 20)
    assert both == [a and i <= 5 for i, a in enumerate(flags)]


def test_unguided_steps_run_the_conditional_half_alone(package: Path) -> None:
    pipe = open_pipe(package)
    pipe("a red fox", num_inference_steps=6, guidance_scale=7.5, guidance_cutoff=0.3, seed=3, scheduler="ddim")
    batches = [call["sample"][0] for call in pipe.engines["unet"].calls]  # type: ignore[attr-defined]
    assert batches == [2, 2, 1, 1, 1, 1]  # steps 0..int(6 * 0.3) = 0..1 guided
    conditioning = [call["encoder_hidden_states"][0] for call in pipe.engines["unet"].calls]  # type: ignore[attr-defined]
    assert conditioning == batches


def test_an_unguided_step_gives_what_an_unguided_call_gives(package: Path) -> None:
    pipe = open_pipe(package)
    cut = pipe("a red fox", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.5, guidance_cutoff=0.0,
               guidance_interval=(0.0, 1e-6), seed=3).images[0]
    plain = pipe("a red fox", num_inference_steps=4, guidance_scale=1.0, seed=3).images[0]
    assert cut.tobytes() == plain.tobytes()  # no step inside the interval: none guided, as guidance 1


def test_off_is_bit_identical_and_a_full_schedule_changes_nothing(package: Path) -> None:
    pipe = open_pipe(package)
    plain = pipe("a red fox", num_inference_steps=5, seed=9).images[0]
    full = pipe("a red fox", num_inference_steps=5, seed=9, guidance_cutoff=1.0, guidance_interval=(0.0, 1e9)).images[0]
    cut = pipe("a red fox", num_inference_steps=5, seed=9, guidance_cutoff=0.4).images[0]
    assert plain.tobytes() == full.tobytes()
    assert plain.tobytes() != cut.tobytes()


def test_a_static_guided_profile_serves_the_unguided_steps(package: Path) -> None:
    free = open_pipe(package)
    expected = free("a red fox", num_inference_steps=4, guidance_cutoff=0.25, seed=2).images[0]
    static = open_pipe(package, unet=(2, 2), text_encoder=(2, 2))
    image = static("a red fox", num_inference_steps=4, guidance_cutoff=0.25, seed=2).images[0]
    assert {call["sample"][0] for call in static.engines["unet"].calls} == {2}  # type: ignore[attr-defined]
    assert image.tobytes() == expected.tobytes()


def test_calls_with_different_schedules_never_share_a_batch(package: Path) -> None:
    pipe = open_pipe(package)
    plain, cut, cut_too = (pipe.prepare("a fox", seed=1, num_inference_steps=3, **extra)
                           for extra in ({}, {"guidance_cutoff": 0.5}, {"guidance_cutoff": 0.5}))
    assert plain.batch_key() != cut.batch_key() == cut_too.batch_key()
    with pytest.raises(PipelineInputError, match="one batch_key"):
        pipe.run_batch([plain, cut])
    together = pipe.run_batch([cut, cut_too])
    alone = pipe.run_batch([cut])
    assert together[0].images[0].tobytes() == alone[0].images[0].tobytes()  # type: ignore[union-attr]


def test_png_parameters_record_the_schedule_only_when_set(package: Path) -> None:
    pipe = open_pipe(package)
    plain = pipe("a fox", num_inference_steps=2, seed=1).parameters[0]
    cut = pipe("a fox", num_inference_steps=2, seed=1, guidance_cutoff=0.5, guidance_interval=(0.3, 5)).parameters[0]
    assert "guidance_cutoff" not in plain and "guidance_interval" not in plain
    assert cut["guidance_cutoff"] == 0.5 and cut["guidance_interval"] == [0.3, 5.0]


@pytest.mark.parametrize("arguments,fragment", [
    ({"guidance_cutoff": 1.5}, "guidance_cutoff must be a number from 0 to 1"),
    ({"guidance_cutoff": "half"}, "guidance_cutoff must be a number from 0 to 1"),
    ({"guidance_cutoff": True}, "guidance_cutoff must be a number from 0 to 1"),
    ({"guidance_interval": (5, 1)}, "0 <= low < high"),
    ({"guidance_interval": (-1, 1)}, "0 <= low < high"),
    ({"guidance_interval": 3.0}, "two numbers"),
    ({"guidance_interval": (0.1, 1, 2)}, "two numbers"),
    ({"guidance_interval": (float("nan"), 1)}, "two numbers"),
])
def test_bad_schedules_are_refused_with_what_is_allowed(package: Path, arguments: dict, fragment: str) -> None:
    pipe = open_pipe(package)
    with pytest.raises(PipelineInputError, match=fragment):
        pipe.prepare("a fox", **arguments)


def test_parse_interval_reads_low_high() -> None:
    assert parse_interval("0.28,5.42") == (0.28, 5.42)
    assert parse_interval("0:inf") == (0.0, float("inf"))
    with pytest.raises(PipelineInputError, match="two numbers"):
        parse_interval("5")
