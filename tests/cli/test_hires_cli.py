"""``generate --hires-scale`` and ``--preview-every``, and the builders' ``--hires-scale``, from the command line on a
package of numpy engines (tests/fakes.py): one PNG recording both passes, previews of both passes, and each refusal
as one ``error:`` line before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from diffship.cli import cli, main
from diffship.engines.backend import register_backend
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_backend("numpy", NumpyBackend)
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def invoke(*arguments: str) -> Result:
    return CliRunner().invoke(cli, list(arguments))


def generate(package: Path, out: Path, *arguments: str) -> Result:
    return invoke("generate", "--package", str(package), "--backend", "numpy", "--steps", "2", "--scheduler", "euler",
                  "--prompt", "a castle", "--out", str(out), *arguments)


def one_error_line(capsys: pytest.CaptureFixture[str], arguments: list[str], *fragments: str) -> None:
    """``arguments`` run as ``diffship.cli.main`` runs a command line (user errors: one line, exit status 2)."""
    assert main(arguments) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def generate_line(package: Path, out: Path, *arguments: str) -> list[str]:
    return ["generate", "--package", str(package), "--backend", "numpy", "--steps", "2", "--prompt", "a castle",
            "--out", str(out), *arguments]


def test_generate_hires_writes_one_png_recording_both_passes(package: Path, tmp_path: Path) -> None:
    result = generate(package, tmp_path / "castle.png", "--hires-scale", "2", "--hires-upscaler", "latent-bicubic",
                      "--hires-strength", "0.55", "--hires-steps", "3", "--hires-prompt", "a castle, detailed")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["castle.png"]
    with Image.open(tmp_path / "castle.png") as image:
        assert image.size == (128, 128)
        parameters = json.loads(image.info["diffship"])
    assert (parameters["height"], parameters["steps"]) == (64, 2)
    assert parameters["hires"] == {"upscaler": "latent-bicubic", "scale": 2.0, "height": 128, "width": 128,
                                   "strength": 0.55, "steps": 3, "scheduler": "euler", "prompt": "a castle, detailed"}


def test_generate_writes_previews_of_both_passes(package: Path, tmp_path: Path) -> None:
    result = generate(package, tmp_path / "castle.png", "--hires-scale", "2", "--hires-steps", "4", "--hires-strength",
                      "0.5", "--preview-every", "2", "--preview-dir", str(tmp_path / "previews"))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert written == ["1-0002-00.png", "2-0002-00.png"]
    with Image.open(tmp_path / "previews" / "2-0002-00.png") as preview:
        assert preview.size == (16, 16)


@pytest.mark.parametrize("arguments,fragments", [
    (["--hires-scale", "1.5"], ["hires scale 1.5 of 64x64 gives 96x96 (width x height)", "try scale 2"]),
    (["--hires-scale", "2", "--hires-upscaler", "sharp"], ["--hires-upscaler", "'sharp' is not one of"]),
    (["--hires-scale", "2", "--grid", "steps=1,2"], ["--hires-scale starts from text"]),
    (["--preview-every", "2"], ["--preview-every N and --preview-dir DIR go together"]),
])
def test_generate_refuses_bad_hires_requests_in_one_line(package: Path, tmp_path: Path, arguments: list[str],
                                                         fragments: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    one_error_line(capsys, generate_line(package, tmp_path / "out.png", *arguments), *fragments)
    assert not (tmp_path / "out.png").exists()


def test_build_trt_refuses_a_static_hires_build_before_building(package: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    one_error_line(capsys, ["build-trt", "--package", str(package), "--static", "--height", "64", "--width", "64",
                            "--hires-scale", "2", "--backend", "trt-rtx"],
                   "a static build has one shape and the hires fix runs two (64x64, then 128x128)")
    assert not (package / "engines").exists()


def test_build_ort_refuses_a_hires_size_the_model_cannot_take(package: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    one_error_line(capsys, ["build-ort", "--package", str(package), "--hires-scale", "1.5"],
                   "--hires-scale 1.5 of 64x64 gives 96x96 (width x height), not a multiple of 64 pixels")
