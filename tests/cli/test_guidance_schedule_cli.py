"""``generate --guidance-cutoff / --guidance-interval`` and their ``--grid`` axes, on a package of numpy engines
(tests/fakes.py): the PNG parameters record them, they change the picture the way the Python call does, and bad
values are one ``error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from diffship.cli import cli
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from tests.cli.test_cli_errors import assert_one_line_error
from tests.conftest import run_cli
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_backend("numpy", NumpyBackend)
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def generate(package: Path, out: Path, *arguments: str) -> tuple[np.ndarray, dict[str, object]]:
    result = CliRunner().invoke(cli, ["generate", "--package", str(package), "--backend", "numpy", "--steps", "4",
                                      "--guidance", "5", "--seed", "3", "--prompt", "a red fox", "--out", str(out),
                                      *arguments])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB")), json.loads(image.text["diffship"])


def test_generate_guidance_schedule_is_the_calls_and_is_recorded(package: Path, tmp_path: Path) -> None:
    image, parameters = generate(package, tmp_path / "cut.png", "--guidance-cutoff", "0.25",
                                 "--guidance-interval", "0.5,20")
    assert parameters["guidance_cutoff"] == 0.25 and parameters["guidance_interval"] == [0.5, 20.0]
    register_backend("numpy", NumpyBackend)
    with Pipeline.from_package(package, backend="numpy") as pipe:
        expected = pipe("a red fox", num_inference_steps=4, guidance_scale=5, seed=3, guidance_cutoff=0.25,
                        guidance_interval=(0.5, 20)).images[0]
    assert image.tobytes() == expected.tobytes()
    plain, recorded = generate(package, tmp_path / "plain.png")
    assert "guidance_cutoff" not in recorded and plain.tobytes() != image.tobytes()


def test_generate_grid_over_cutoff_and_interval(package: Path, tmp_path: Path) -> None:
    _, parameters = generate(package, tmp_path / "grid.png", "--grid", "cutoff=1,0.5,0", "--grid",
                             "interval=0:inf,0.5:5")
    assert parameters["grid"] == {"cutoff": [1.0, 0.5, 0.0], "interval": [[0.0, float("inf")], [0.5, 5.0]]}
    assert "guidance_cutoff" not in parameters and "guidance_interval" not in parameters


@pytest.mark.parametrize("arguments,fragments", [
    (["--guidance-cutoff", "1.5"], ("--guidance-cutoff", "0.0<=x<=1.0")),
    (["--guidance-interval", "5"], ("guidance_interval must be two numbers", "0 <= low < high")),
    (["--guidance-interval", "3,1"], ("guidance_interval must be two numbers", "(low, high]")),
    (["--grid", "interval=0.5,5"], ("values of interval must be LOW:HIGH pairs",)),
    (["--grid", "cutoff=half"], ("values of cutoff must be float",)),
    (["--grid", "cache=2.5"], ("values of cache must be int",)),
])
def test_generate_bad_guidance_schedules_are_one_line(arguments: list[str], fragments: tuple[str, ...],
                                                      tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tmp_path / "none"), "--prompt", "a", "--out",
                     str(tmp_path / "o.png"), *arguments)
    assert_one_line_error(result, *fragments)


def test_generate_cache_interval_on_a_package_without_cache_graphs_is_one_line(package: Path, tmp_path: Path) -> None:
    register_backend("numpy", NumpyBackend)
    result = CliRunner().invoke(cli, ["generate", "--package", str(package), "--backend", "numpy", "--prompt", "a",
                                      "--cache-interval", "3", "--out", str(tmp_path / "o.png")])
    # The CLI's entry point prints this error as one line (tests/cli/test_cli_errors.py); CliRunner shows it raised.
    assert isinstance(result.exception, PipelineInputError)
    assert "has no DeepCache graphs" in str(result.exception) and "--cache-branch" in str(result.exception)


@pytest.mark.slow  # a process that imports torch, and an export of the two graphs
def test_export_cache_branch_then_generate_cache_interval(tiny_package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_package, copy)
    source = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))["source"]
    export = ["export", "--model", source["model"], "--seed", str(source.get("seed", 0)), "--dtype", "fp32,fp16",
              "--out", str(copy)]
    assert_one_line_error(run_cli(*export, "--cache-branch", "99"), "cache branch 99", "from 0")
    exported = run_cli(*export, "--cache-branch", "0")
    assert exported.returncode == 0, exported.stderr
    assert "up to date, nothing exported" in exported.stdout and "DeepCache graphs at branch 0" in exported.stdout
    out = tmp_path / "fox.png"
    made = run_cli("generate", "--package", str(copy), "--prompt", "a fox", "--steps", "6", "--cache-interval", "3",
                   "--cache-schedule", "nonuniform", "--cache-center", "2", "--seed", "1", "--out", str(out))
    assert made.returncode == 0, made.stderr
    with Image.open(out) as image:
        parameters = json.loads(image.text["diffship"])
    assert (parameters["cache_interval"], parameters["cache_schedule"], parameters["cache_center"]) == \
        (3, "nonuniform", 2)
