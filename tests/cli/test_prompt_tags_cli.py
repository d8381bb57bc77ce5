"""``generate --lora-dir``: the web UI's ``<lora:NAME:WEIGHT>`` tags in a prompt apply LoRAs from that folder; without
the folder a tag is one error line, exit 2 (never words for the text encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from diffship.runtime import Pipeline
from tests.conftest import run_cli

ARGUMENTS = ("--steps", "3", "--seed", "4", "--height", "64", "--width", "64")


def test_generate_applies_prompt_lora_tags_from_the_lora_dir(tiny_package: Path, lora_files: dict[str, Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    done = run_cli("generate", "--package", str(tiny_package), "--prompt", "a red fox <lora:r4:0.6>", *ARGUMENTS,
                   "--lora-dir", str(lora_files["r4"].parent), "--out", str(out))
    assert done.returncode == 0, done.stderr
    with Image.open(out) as png:
        recorded = json.loads(png.text["diffship"])
        infotext = png.text["parameters"]
        written = np.asarray(png.convert("RGB"))
    with Pipeline.from_package(tiny_package, loras=[(lora_files["r4"], 0.6)]) as pipe:
        expected = pipe("a red fox", num_inference_steps=3, seed=4, height=64, width=64).images[0]
    np.testing.assert_array_equal(written, expected)
    assert recorded["loras"] == ["r4.safetensors:0.6"] and recorded["prompt"] == "a red fox"
    assert infotext.startswith("a red fox <lora:r4:0.6>\nSteps: 3, Sampler: PLMS")  # as the web UI writes it


def test_generate_refuses_a_prompt_lora_tag_without_a_lora_dir(tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    done = run_cli("generate", "--package", str(tiny_package), "--prompt", "a fox <lora:r4:0.6>", *ARGUMENTS,
                   "--out", str(out))
    assert done.returncode == 2 and "Traceback" not in done.stderr and not out.exists()
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the prompt names LoRA 'r4' with a <lora:...> tag but no LoRA folder was given (--lora-dir, "
        "lora_dir=); give the folder, or remove the tag")
