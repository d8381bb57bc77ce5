"""What a call may ask for: limits, types, overflow and output files. Every refusal is a PipelineInputError (or
PipelineError for what goes wrong mid-way) that names the argument and what is allowed, raised before any engine
runs. Over numpy engines (tests/fakes.py), so these run in the fast layer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import diffship.runtime.requests as requests
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineError, PipelineInputError
from diffship.runtime.images import read_parameters
from diffship.runtime.requests import Limits
from tests.conftest import images_alone_and_from_threads
from tests.fakes import TINY, NumpyBackend, toy_functions, write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("requests") / "pkg")


@pytest.fixture
def pipe(package: Path) -> Pipeline:
    backend = NumpyBackend()
    register_backend("numpy", lambda: backend)
    opened = Pipeline.from_package(package, backend="numpy")
    opened.test_backend = backend  # type: ignore[attr-defined]
    return opened


class Weird:
    pass


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        ({"num_inference_steps": 5000}, "num_inference_steps must be an integer from 1 to 999"),
        ({"num_images_per_prompt": 100}, "num_images_per_prompt must be an integer from 1 to 32"),
        ({"prompt": ["a"] * 20, "num_images_per_prompt": 2}, "40 images; one call makes at most 32"),
        ({"height": 4096, "width": 4096}, "at most 4,194,304 (Limits.max_pixels)"),
        ({"prompt": "x" * 20_001}, "prompt has 20001 characters; at most 20000"),
        ({"prompt": "a \udcff fox"}, "prompt is not valid Unicode text: character 2 is a lone surrogate"),
        ({"prompt": ["a fox", None]}, "prompt[1] must be a string, got NoneType"),
        ({"negative_prompt": [3]}, "negative_prompt[0] must be a string, got int"),
        ({"scheduler": ["ddim"]}, "scheduler must be a name (a string), got list"),
        ({"guidance_scale": 10**400}, "guidance_scale must be finite and >= 0"),
        ({"guidance_scale": complex(1, 1)}, "guidance_scale must be a number, got complex"),
        ({"latents": "noise"}, "latents must be a numpy array of floats of shape (1, 4, 8, 8)"),
        ({"latents": 3}, "got int"),
        ({"latents": np.zeros((1, 4, 8, 8), dtype=bool)}, "got bool array"),
        ({"latents": np.zeros((1, 4, 8, 8), dtype=complex)}, "got complex128 array"),
        ({"latents": np.array([Weird()] * 256, dtype=object).reshape(1, 4, 8, 8)}, "got object array"),
        ({"latents": np.full((1, 4, 8, 8), 1e300)}, "latents overflow float32"),
        ({"callback": "print"}, "callback must be callable"),
        ({"seed": 2**64}, "seed must be an integer from 0 to 9223372036854775807"),
        ({"seed": -1}, "seed must be an integer from 0"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_calls_are_refused_before_any_engine_runs(pipe: Pipeline, arguments: dict, fragment: str) -> None:
    arguments = {"prompt": "a red fox", "num_inference_steps": 2, **arguments}
    with pytest.raises(PipelineInputError) as refused:
        pipe(**arguments)
    assert fragment in str(refused.value)
    assert all(not engine.calls for engine in pipe.test_backend.opened)  # type: ignore[attr-defined]


def test_limits_can_be_raised_on_purpose(package: Path) -> None:
    register_backend("numpy", NumpyBackend)
    pipe = Pipeline.from_package(package, backend="numpy", limits=Limits(max_steps=2000))
    assert len(pipe("a fox", num_inference_steps=1500, scheduler="euler", seed=0).images) == 1


def test_a_size_that_cannot_be_decoded_in_memory_is_refused(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(PipelineInputError, match=r"need about 0\.2 GiB to decode and this machine has 0\.1 GiB"):
        pipe("a fox", height=192, width=192, num_images_per_prompt=2, num_inference_steps=1)


def overflowing(package: Path) -> Pipeline:
    functions = dict(toy_functions(TINY))
    unet = functions["unet"]
    functions["unet"] = lambda feeds: {"model_output": unet(feeds)["model_output"] * np.float32(1e38)}
    backend = NumpyBackend(functions=functions)
    register_backend("numpy", lambda: backend)
    return Pipeline.from_package(package, backend="numpy")


def test_overflow_is_reported_with_the_likely_cause(package: Path) -> None:
    pipe = overflowing(package)
    with pytest.raises(PipelineError, match="guidance_scale 1e\\+06 is extreme"):
        pipe("a fox", guidance_scale=1e6, num_inference_steps=2, scheduler="ddim")
    with pytest.raises(PipelineError, match="injected latents are far outside a unit normal draw"):
        pipe("a fox", guidance_scale=1.0, latents=np.full((1, 4, 8, 8), 1e30, np.float32), num_inference_steps=2,
             scheduler="ddim")


def test_nan_pixels_from_the_decoder_are_an_error_not_a_black_image(package: Path) -> None:
    functions = dict(toy_functions(TINY))
    functions["vae_decoder"] = lambda feeds: {"sample": np.full((1, 3, 64, 64), np.nan, np.float32)}
    register_backend("numpy", lambda: NumpyBackend(functions=functions))
    pipe = Pipeline.from_package(package, backend="numpy")
    with pytest.raises(PipelineError, match="the VAE decoder returned NaN or infinite pixels"):
        pipe("a fox", num_inference_steps=2)


def test_saved_pngs_name_the_model_not_the_path_and_only_used_negative_prompts(pipe: Pipeline, tmp_path: Path) -> None:
    guided = pipe("a fox", negative_prompt="blurry", guidance_scale=7.5, num_inference_steps=2, seed=1)
    unguided = pipe("a fox", negative_prompt="blurry", guidance_scale=1.0, num_inference_steps=2, seed=1)
    first, second = guided.save(tmp_path / "g")[0], unguided.save(tmp_path / "u")[0]
    saved, plain = read_parameters(first), read_parameters(second)
    assert saved["negative_prompt"] == "blurry" and "negative_prompt" not in plain
    assert str(pipe.package.root) not in first.read_bytes().decode("latin-1")
    assert saved["model"]["export_key"] == "fake" and saved["model"]["family"] == "sd1"
    assert first.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_calls_from_many_threads_give_what_they_give_one_by_one(pipe: Pipeline) -> None:
    arguments = [{"prompt": f"a fox number {k}", "seed": k, "num_inference_steps": 3, "scheduler": "euler_a"}
                 for k in range(8)]
    alone, together = images_alone_and_from_threads(pipe, arguments)
    for a, b in zip(alone, together, strict=True):
        assert b is not None and a.tobytes() == b.tobytes()
