"""Single-file checkpoints of the tiny models for the tests, written by scripts/make_single_file_checkpoints.py's own
functions (whose output diffusers' from_single_file reads back exactly: tests/scripts/test_make_single_file_checkpoints.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.make_single_file_checkpoints import to_original, write_checkpoint

TINY_MODELS = ("tiny", "tiny-v", "tiny-inpaint", "tiny-xl", "tiny-xl-refiner")
ARCHITECTURES = {"tiny": "sd1", "tiny-v": "sd2", "tiny-inpaint": "sd1-inpaint", "tiny-xl": "sdxl",
                 "tiny-xl-refiner": "sdxl-refiner"}


def write_tiny_file(model: str, out: Path, dtype: str = "fp32", include_vae: bool = True) -> Path:
    from diffship.exporter.sources import load_source

    source = load_source(model=model)
    try:
        return write_checkpoint(to_original(source, include_vae=include_vae), out, dtype)
    finally:
        source.close()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny model as an fp32 single file with its VAE."""
    folder = tmp_path_factory.mktemp("single-files")
    return {model: write_tiny_file(model, folder / f"{model}.safetensors") for model in TINY_MODELS}
