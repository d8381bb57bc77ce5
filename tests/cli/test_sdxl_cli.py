"""The SDXL base -> refiner hand-off from the command line, as a user runs it: ``generate --refiner``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli_errors import assert_one_line_error
from tests.conftest import run_cli


def test_generate_with_refiner_writes_the_refined_image(tiny_xl_package: Path, tiny_xl_refiner_package: Path,
                                                       tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "fox.png"
    result = run_cli("generate", "--package", str(tiny_xl_package), "--refiner", str(tiny_xl_refiner_package),
                     "--prompt", "a red fox", "--steps", "5", "--guidance", "5", "--height", "64", "--width", "96",
                     "--denoising-end", "0.6", "--aesthetic-score", "7", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "refining in" in result.stdout and "refiner:" in result.stdout
    with Image.open(out) as image:
        assert image.size == (96, 64)
        parameters = json.loads(image.text["diffship"])
    assert parameters["denoising_start"] == 0.6 and parameters["image"] == "latents"
    assert parameters["model"]["family"] == "sdxl-refiner" and parameters["base"]["family"] == "sdxl"


def test_generate_refiner_without_image_is_one_line(tiny_xl_refiner_package: Path, tmp_path: Path) -> None:
    result = run_cli("generate", "--package", str(tiny_xl_refiner_package), "--prompt", "x", "--steps", "2",
                     "--out", str(tmp_path / "o.png"))
    assert_one_line_error(result, "this package is an SDXL refiner, which does image-to-image only: give image")
