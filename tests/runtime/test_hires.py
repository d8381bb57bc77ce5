"""The hires fix (runtime/hires.py) over numpy engines: two passes in one call recorded in one set of parameters,
each pass's own steps and prompt, progress per pass, and every refusal before any engine runs (a scale that gives a
size the model cannot take, beyond the limits, an unknown upscaler, a static profile of another size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffship.core.package import ModelPackage
from diffship.core.progress import StepEvent
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.hires import HiresFix, run_hires
from diffship.runtime.requests import Limits
from diffship.runtime.upscale import interpolate
from tests.fakes import NumpyBackend, with_profile, write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def open_pipe(package: Path, size: tuple[int, int] | None = None, limits: Limits | None = None) -> Pipeline:
    """A pipeline over numpy engines; ``size``: every engine's one latent size (a static profile)."""
    specs = {c: ModelPackage.open(package).variant(c, "fp32").spec for c in ("text_encoder", "unet", "vae_decoder")}
    profiles = {} if size is None else {name: with_profile(spec, (1, 2), size) for name, spec in specs.items()}
    backend = NumpyBackend(profiles)
    register_backend("numpy", lambda: backend)
    return Pipeline.from_package(package, backend="numpy", limits=limits)


def test_hires_runs_both_passes_and_records_them(package: Path) -> None:
    pipe = open_pipe(package)
    events: list[StepEvent] = []
    result = run_hires(pipe, "a castle", HiresFix(scale=2, upscaler="latent-bicubic", strength=0.5, steps=4,
                                                   prompt="a castle, detailed"),
                       {"num_inference_steps": 3, "seed": 7, "scheduler": "euler", "progress": events.append})
    assert result.images[0].shape == (128, 128, 3)
    params = result.parameters[0]
    assert (params["prompt"], params["height"], params["steps"], params["seed"]) == ("a castle", 64, 3, 7)
    assert params["hires"] == {"upscaler": "latent-bicubic", "scale": 2, "height": 128, "width": 128, "strength": 0.5,
                               "steps": 4, "scheduler": "euler", "prompt": "a castle, detailed"}
    assert [(e.pass_index, e.step, e.steps) for e in events] == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 2), (1, 2, 2)]


def test_hires_is_txt2img_then_img2img_of_the_upscaled_latents(package: Path) -> None:
    pipe = open_pipe(package)
    first = pipe("a fox", num_inference_steps=2, seed=3, scheduler="euler", output_type="latent")
    assert first.latents is not None
    upscaled = interpolate(first.latents, (16, 16), "nearest-exact")
    second = pipe("a fox", image=upscaled, strength=0.6, num_inference_steps=5, seed=3, scheduler="euler",
                  height=128, width=128)
    hires = run_hires(pipe, "a fox", HiresFix(2, "Latent (nearest-exact)", strength=0.6, steps=5),
                      {"num_inference_steps": 2, "seed": 3, "scheduler": "euler"})
    assert np.array_equal(hires.images[0], second.images[0])


def test_lanczos_hires_runs_each_picture_with_its_own_seed(package: Path) -> None:
    result = run_hires(open_pipe(package), ["a fox", "a cat"], HiresFix(2, "lanczos", strength=0.5, steps=2),
                       {"num_inference_steps": 2, "seed": 1, "num_images_per_prompt": 2, "scheduler": "euler"})
    assert [p["seed"] for p in result.parameters] == [1, 2, 3, 4]
    assert [p["prompt"] for p in result.parameters] == ["a fox", "a fox", "a cat", "a cat"]
    assert all(image.shape == (128, 128, 3) for image in result.images)


@pytest.mark.parametrize("hires,limits,fragment", [
    (dict(scale=1.5), None, "hires scale 1.5 of 64x64 gives 96x96 (width x height), which is not a multiple of 64 "
                            "pixels; try scale 2"),
    (dict(scale=4), Limits(max_pixels=128 * 128), "the hires pass at 256x256 (width x height): 256x256 is 65,536 "
                                                  "pixels per image; at most 16,384"),
    (dict(upscaler="latent-sharp"), None, "unknown hires upscaler 'latent-sharp'; give one of latent, "),
    (dict(scale=9), None, "hires scale must be a number from 1 to 8, got 9"),
])
def test_bad_hires_requests_are_refused_before_anything_runs(package: Path, hires: dict[str, object],
                                                             limits: Limits | None, fragment: str) -> None:
    pipe = open_pipe(package, limits=limits)
    with pytest.raises(PipelineInputError) as refused:
        run_hires(pipe, "a fox", HiresFix(**hires), {"num_inference_steps": 2})  # type: ignore[arg-type]
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert all(not engine.calls for engine in pipe.engines.values())  # type: ignore[attr-defined]


def test_a_static_engine_of_the_first_size_refuses_the_hires_pass_at_once(package: Path) -> None:
    pipe = open_pipe(package, size=(8, 8))
    with pytest.raises(PipelineInputError) as refused:
        run_hires(pipe, "a fox", HiresFix(2), {"num_inference_steps": 2})
    message = str(refused.value)
    assert message.startswith("the hires pass at 128x128 (width x height): the loaded engines take 64x64 ")
    assert "static profile" in message and message.endswith("build-trt --hires-scale 2 builds engines that cover both "
                                                            "passes)")
    assert all(not engine.calls for engine in pipe.engines.values())  # type: ignore[attr-defined]
