"""Per-step progress (``Pipeline.prepare(progress=...)``, ``core.progress.ProgressBar``) and live previews
(``preview_every``, runtime/previews.py) over numpy engines: the steps each pass really runs, the bar's text on a
fake terminal, nothing at all on a stream that is not one, and the web UI's cheap latent -> RGB map."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffship.cli import cli
from diffship.core.families import SD1, SDXL
from diffship.core.progress import ProgressBar, StepEvent
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.previews import cheap_preview
from tests.fakes import NumpyBackend, write_package


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    register_backend("numpy", NumpyBackend)
    return Pipeline.from_package(write_package(tmp_path_factory.mktemp("fake") / "pkg"), backend="numpy")


def test_progress_counts_the_steps_each_task_runs(pipe: Pipeline) -> None:
    seen: list[StepEvent] = []
    pipe("a fox", num_inference_steps=4, seed=1, progress=seen.append, scheduler="euler")
    assert [(e.step, e.steps) for e in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    pipe("a fox", num_inference_steps=4, seed=1, progress=seen.append, scheduler="pndm")
    assert [(e.step, e.steps) for e in seen][-1] == (5, 5)  # PNDM's PLMS warm-up calls the UNet once more, as diffusers
    seen.clear()
    image = np.full((64, 64, 3), 128, np.uint8)
    pipe("a fox", image=image, strength=0.5, num_inference_steps=10, seed=1, progress=seen.append, scheduler="euler")
    assert [(e.step, e.steps) for e in seen] == [(k, 5) for k in range(1, 6)]  # int(10 x 0.5) steps, as diffusers


def test_progress_keeps_the_old_step_callback(pipe: Pipeline) -> None:
    steps: list[int] = []
    events: list[StepEvent] = []
    pipe("a fox", num_inference_steps=3, seed=1, scheduler="euler", callback=lambda i, t, x: steps.append(i),
         progress=events.append)
    assert steps == [0, 1, 2] and len(events) == 3


def test_previews_come_every_n_steps_and_at_the_last(pipe: Pipeline) -> None:
    seen: list[StepEvent] = []
    latents: list[np.ndarray] = []
    pipe("a fox", num_inference_steps=5, seed=1, num_images_per_prompt=2, progress=seen.append, preview_every=2,
         scheduler="euler",
         callback=lambda i, t, x: latents.append(x.copy()))
    assert [e.step for e in seen if e.preview is not None] == [2, 4, 5]
    preview = seen[1].preview
    assert preview is not None and len(preview) == 2 and preview[0].shape == (8, 8, 3)
    assert all(np.array_equal(a, b) for a, b in zip(preview, cheap_preview(latents[1], SD1.preview_factors), strict=True))


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_preview_every_refuses_what_is_not_a_step_count(pipe: Pipeline, value: object) -> None:
    with pytest.raises(PipelineInputError, match="preview_every must be a whole number of steps >= 0"):
        pipe.prepare("a fox", progress=print, preview_every=value)  # type: ignore[arg-type]


def test_preview_every_without_progress_is_refused(pipe: Pipeline) -> None:
    with pytest.raises(PipelineInputError, match="preview_every needs a progress callback"):
        pipe.prepare("a fox", preview_every=2)


@pytest.mark.parametrize("family", [SD1, SDXL], ids=["sd", "sdxl"])
def test_cheap_preview_is_the_web_uis_approximation(family: object) -> None:
    # The web UI's modules/sd_vae_approx.py cheap_approximation and its sample_to_image, written in torch.
    factors = family.preview_factors  # type: ignore[attr-defined]
    latents = np.random.default_rng(0).standard_normal((2, 4, 6, 5), dtype=np.float32) * 2
    for index, sample in enumerate(torch.from_numpy(latents)):
        x = torch.einsum("lxy,lr -> rxy", sample, torch.tensor(factors))
        x = torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)
        expected = (255.0 * np.moveaxis(x.numpy(), 0, 2)).astype(np.uint8)
        assert np.array_equal(cheap_preview(latents, factors)[index], expected)


def test_bar_draws_rate_and_eta_on_a_terminal() -> None:
    stream, clock = Terminal(), Clock()
    bar = ProgressBar(stream, clock=clock)
    bar(StepEvent(1, 4, 999.0))  # the pass's clock starts here: the first step's own time is not seen
    assert stream.getvalue() == "\r[######..................] 1/4  -- it/s  ETA --  "
    clock.now = 2.0
    bar(StepEvent(2, 4, 800.0))
    assert stream.getvalue().split("\r")[-1] == "[############............] 2/4  0.50 it/s  ETA 4s  "
    clock.now = 4.0
    bar(StepEvent(4, 4, 1.0))
    assert stream.getvalue().endswith("[########################] 4/4  0.75 it/s  ETA 0s  \n")


def test_bar_starts_a_line_per_pass_and_names_it() -> None:
    stream, clock = Terminal(), Clock()
    bar = ProgressBar(stream, clock=clock)
    bar(StepEvent(1, 2, 1.0, "first pass", 0, 2))
    bar(StepEvent(1, 3, 1.0, "hires", 1, 2))
    bar.done()
    lines = stream.getvalue().split("\n")
    assert lines[0].startswith("\rfirst pass 1/2 [") and lines[1].startswith("\rhires 2/2 [") and lines[2] == ""


def test_bar_is_silent_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar(StepEvent(1, 2, 1.0))
    bar.done()
    assert not bar.enabled and stream.getvalue() == ""


def test_generate_prints_nothing_extra_when_stderr_is_not_a_terminal(pipe: Pipeline, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["generate", "--package", str(pipe.package.root), "--backend", "numpy",
                                      "--steps", "3", "--prompt", "a fox", "--out", str(tmp_path / "fox.png")])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"wrote {tmp_path / 'fox.png'}")


def test_bar_writes_long_etas_in_minutes_and_hours() -> None:
    bar = ProgressBar(io.StringIO())
    assert bar.render(StepEvent(11, 1000, 1.0), 10.0, 1).endswith("1.00 it/s  ETA 16m29s  ")
    assert bar.render(StepEvent(2, 5000, 1.0), 1.0, 1).endswith("1.00 it/s  ETA 1h23m  ")
