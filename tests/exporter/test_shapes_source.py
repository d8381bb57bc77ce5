"""The bundled, trained ``shapes`` preset: where its weights come from and what its package records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffship.exporter.sources import PRESETS, SourceError, check_source_arguments


def test_shapes_preset_refuses_random_weights() -> None:
    with pytest.raises(SourceError, match="ships trained weights"):
        check_source_arguments("shapes", None, random_weights=True)


def test_shapes_folder_fits_the_size_budget_and_records_its_training() -> None:
    folder = PRESETS["shapes"].folder
    assert folder is not None and (folder / "model_index.json").is_file()
    weights = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert weights <= 25 * 1024 * 1024, weights
    record = json.loads((folder / "training.json").read_text())
    assert record["seconds"] <= 60 * 60 and len(record["weights_sha256"]) == 64


def test_shapes_package_names_its_bundled_source(shapes_package: Path) -> None:
    from diffship.core.package import ModelPackage

    package = ModelPackage.open(shapes_package)
    source = package.manifest.source
    assert source["kind"] == "bundled" and source["model"] == "shapes"
    assert source["trained_weights_sha256"] == json.loads((PRESETS["shapes"].folder / "training.json").read_text())[
        "weights_sha256"]
    assert package.constants.vae_scale_factor == 4
    assert (package.constants.default_height, package.constants.default_width) == (64, 64)
