"""``GenerationResult.save``: a folder or a .png path, never a folder named like a file; existing files are not
replaced unless asked; an unwritable place is one clear error, not an OSError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffship.engines.backend import register_backend
from diffship.runtime import GenerationResult, Pipeline
from diffship.runtime.errors import PipelineError, PipelineInputError
from diffship.runtime.images import read_parameters
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerationResult, GenerationResult]:
    package = write_package(tmp_path_factory.mktemp("fake") / "pkg")
    register_backend("numpy-results", NumpyBackend)
    with Pipeline.from_package(package, backend="numpy-results") as pipe:
        one = pipe("a red fox", num_inference_steps=2, seed=5)
        two = pipe("a red fox", num_inference_steps=2, seed=5, num_images_per_prompt=2)
    return one, two


def test_results_save_to_a_png_path_writes_that_file(results: tuple[GenerationResult, ...], tmp_path: Path) -> None:
    one, two = results
    assert one.save(tmp_path / "fox.png") == [tmp_path / "fox.png"]
    assert (tmp_path / "fox.png").is_file() and read_parameters(tmp_path / "fox.png")["seed"] == 5
    assert two.save(tmp_path / "foxes.png") == [tmp_path / "foxes-00.png", tmp_path / "foxes-01.png"]
    assert [read_parameters(p)["seed"] for p in (tmp_path / "foxes-00.png", tmp_path / "foxes-01.png")] == [5, 6]


def test_results_save_to_a_folder_names_images_by_index_and_seed(results: tuple[GenerationResult, ...],
                                                                 tmp_path: Path) -> None:
    _, two = results
    assert two.save(tmp_path / "out") == [tmp_path / "out" / "image-00-5.png", tmp_path / "out" / "image-01-6.png"]


def test_results_save_refuses_to_replace_unless_asked(results: tuple[GenerationResult, ...], tmp_path: Path) -> None:
    one, two = results
    one.save(tmp_path / "fox.png")
    before = (tmp_path / "fox.png").read_bytes()
    with pytest.raises(PipelineInputError, match="fox.png already exist; pass overwrite=True"):
        one.save(tmp_path / "fox.png")
    assert (tmp_path / "fox.png").read_bytes() == before
    assert one.save(tmp_path / "fox.png", overwrite=True) == [tmp_path / "fox.png"]
    two.save(tmp_path / "out")
    with pytest.raises(PipelineInputError, match="image-01-6.png already exist"):
        two.save(tmp_path / "out")
    with pytest.raises(PipelineInputError, match="is a file; give a folder, or a path ending in .png"):
        one.save(_a_file(tmp_path))


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return path


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permission bits cannot refuse it")
def test_results_save_to_an_unwritable_folder_is_one_clear_error(results: tuple[GenerationResult, ...],
                                                                 tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PipelineError, match="cannot write"):
        results[0].save(locked / "sub" / "fox.png")


def test_results_save_under_a_file_is_one_clear_error(results: tuple[GenerationResult, ...], tmp_path: Path) -> None:
    blocker = _a_file(tmp_path)
    with pytest.raises(PipelineError, match="cannot write"):
        results[0].save(blocker / "fox.png")
