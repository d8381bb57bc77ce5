"""Manifests of schema 1 and 2 (the family's constants flat, SDXL's as optional fields, the refiner's missing first
encoder as a width of 0) read as the constants a fresh export writes; and constants that cannot be their family's are
refused by name. The schema-2 constants are what diffship's own exporter wrote then (scripts/make_v2_manifest_fixtures.py
wrote tests/data/manifests-v2 from that version)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from diffship.core.errors import PackageError
from diffship.core.families.sdxl import XLConstants
from diffship.core.manifest import Manifest
from diffship.core.specs import PipelineConstants, TextEncoderConstants
from tests.fakes import TINY, write_package

V2_MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "manifests-v2"
FIXTURES = {"tiny": "tiny_package", "tiny-v": "tiny_v_package", "tiny-xl": "tiny_xl_package",
            "tiny-xl-refiner": "tiny_xl_refiner_package"}


def without_vocabulary(constants: PipelineConstants) -> PipelineConstants:
    """What schema 2 could not say: the text encoders' vocabulary sizes."""
    return replace(constants, text_encoders=tuple(replace(e, vocab_size=None) for e in constants.text_encoders))


@pytest.mark.export  # the fixtures are looked up by name, so conftest cannot see that they export
@pytest.mark.parametrize("preset", list(FIXTURES))
def test_manifest_upgrade_of_schema_2_gives_the_constants_a_fresh_export_writes(
        preset: str, request: pytest.FixtureRequest) -> None:
    package = Path(request.getfixturevalue(FIXTURES[preset]))
    fresh = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    written_by_v2 = json.loads((V2_MANIFESTS / f"{preset}.json").read_text(encoding="utf-8"))
    assert written_by_v2["family"] == fresh["family"]
    old = {**fresh, "schema_version": 2, "constants": written_by_v2["constants"]}
    upgraded, current = Manifest.from_json(old), Manifest.from_json(fresh)
    assert upgraded.constants == without_vocabulary(current.constants)
    assert upgraded.to_json()["schema_version"] == 3  # the next write stores the newest


def test_manifest_upgrade_reads_the_vocabulary_an_old_refiner_package_has(tiny_xl_refiner_package: Path,
                                                                          tmp_path: Path) -> None:
    import shutil

    from diffship.core.package import ModelPackage

    copy = tmp_path / "refiner"
    shutil.copytree(tiny_xl_refiner_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(schema_version=2, constants=json.loads((V2_MANIFESTS / "tiny-xl-refiner.json").read_text())["constants"])
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    recorded = ModelPackage.open(tiny_xl_refiner_package).vocab_size("text_encoder_2")
    # It has tokenizer_2/ only: the count comes from there (the defect read tokenizer/vocab.json).
    assert ModelPackage.open(copy).vocab_size("text_encoder_2") == recorded == 49408


XL = replace(TINY, text_encoders=(*TINY.text_encoders, TextEncoderConstants("text_encoder_2", "tokenizer_2", 64, "!",
                                                                            49408)),
             family=XLConstants(pooled_size=40, time_ids=6, force_zeros_for_empty_prompt=True))


@pytest.fixture(scope="module")
def xl_manifest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    package = write_package(tmp_path_factory.mktemp("xl") / "pkg", XL, family="sdxl")
    data: dict[str, Any] = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("change,fragment", [
    (lambda c: c["text_encoders"].reverse(),
     "text_encoders are text_encoder_2, text_encoder; a sdxl package has text_encoder, text_encoder_2, in that order"),
    (lambda c: c["text_encoders"].pop(), "text_encoders are text_encoder; a sdxl package has text_encoder, "),
    (lambda c: c["family"].__setitem__("time_ids", 5), "family.time_ids is 5; an SDXL base UNet"),
    (lambda c: c["family"].pop("pooled_size"), "constants.family.pooled_size is missing"),
    (lambda c: c.__setitem__("text_encoders", {}), "constants.text_encoders must be a list"),
    (lambda c: c["text_encoders"][1].__setitem__("hidden_size", 0), "text_encoder_2: hidden_size must be >= 1"),
])
def test_manifest_constants_that_cannot_be_the_familys_are_refused(xl_manifest: dict[str, Any], change,
                                                                   fragment: str) -> None:
    data = json.loads(json.dumps(xl_manifest))
    change(data["constants"])
    with pytest.raises(PackageError, match="constants") as refused:
        Manifest.from_json(data)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("width", [False, 0.0, "0"])
def test_manifest_upgrade_takes_only_an_integer_0_for_the_refiners_missing_encoder(width: object) -> None:
    written_by_v2 = json.loads((V2_MANIFESTS / "tiny-xl-refiner.json").read_text(encoding="utf-8"))
    constants = {**written_by_v2["constants"], "text_hidden_size": width}
    with pytest.raises(PackageError, match="hidden_size must be an integer"):
        Manifest.from_json({"schema_version": 2, "family": "sdxl-refiner", "source": {}, "constants": constants,
                            "export": {}, "components": {}, "files": {}})
