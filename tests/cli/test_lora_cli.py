"""``generate --lora``: a user's LoRA file applied from the command line; a bad one is one error line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffship.runtime import Pipeline
from tests.conftest import run_cli


def test_generate_with_a_lora_matches_the_python_api_and_records_it(tiny_package: Path, lora_files, tmp_path) -> None:
    out = tmp_path / "fox.png"
    arguments = ("--prompt", "a red fox", "--steps", "4", "--seed", "3", "--height", "64", "--width", "64")
    done = run_cli("generate", "--package", str(tiny_package), *arguments, "--lora", f"{lora_files['r4']}:0.8",
                   "--lora", str(lora_files["r8"]), "--out", str(out))
    assert done.returncode == 0, done.stderr
    with Image.open(out) as png:
        parameters = json.loads(png.text["diffship"])
        written = np.asarray(png.convert("RGB"))
    assert parameters["loras"] == ["r4.safetensors:0.8", "r8.safetensors:1"]
    with Pipeline.from_package(tiny_package, loras=[(lora_files["r4"], 0.8), lora_files["r8"]]) as pipe:
        expected = pipe("a red fox", num_inference_steps=4, seed=3, height=64, width=64).images[0]
    assert np.array_equal(written, expected)


def test_generate_with_a_missing_lora_is_one_error_line(tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    done = run_cli("generate", "--package", str(tiny_package), "--prompt", "a fox", "--steps", "2",
                   "--lora", str(tmp_path / "gone.safetensors:0.5"), "--out", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: LoRA file {tmp_path / 'gone.safetensors'} does not exist"
    assert not out.exists()
