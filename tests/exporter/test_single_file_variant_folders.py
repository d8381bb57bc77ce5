"""Diffusers folders as people save them: ``save_pretrained(variant="fp16")`` writes ``*.fp16.safetensors``; export finds
the one variant a folder holds, takes --variant, and says what a folder has when neither works."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from diffship.exporter.sources import SourceError, SourceOptions, load_source, weights_variant  # noqa: E402
from scripts.make_single_file_checkpoints import differences  # noqa: E402


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("variant") / "tiny-fp16"
    source = load_source(model="tiny")
    pipe = source.diffusers_pipeline("txt2img")
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    return folder


def test_variant_folder_is_found_by_itself(fp16_folder: Path) -> None:
    original = load_source(model="tiny")
    source = load_source(model_path=fp16_folder)
    assert source.info["variant"] == "fp16"
    for name, module in source.modules().items():
        assert list(differences(copy.deepcopy(original.modules()[name]).half().float(), module)) == [], name
        assert all(p.dtype == torch.float32 for p in module.parameters())


def test_variant_folder_with_the_variant_named(fp16_folder: Path) -> None:
    assert weights_variant(fp16_folder, "fp16") == "fp16"
    source = load_source(model_path=fp16_folder, options=SourceOptions(variant="fp16"))
    assert source.info["overrides"] == {"variant": "fp16", "vae": None}


def test_variant_folder_hints_when_neither_works(fp16_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="has no bf16 weights .* it has fp16"):
        weights_variant(fp16_folder, "bf16")
    empty = tmp_path / "empty"
    (empty / "unet").mkdir(parents=True)
    with pytest.raises(SourceError, match="--variant fp16 would load"):
        weights_variant(empty, None)
    two = tmp_path / "two"
    (two / "unet").mkdir(parents=True)
    for variant in ("fp16", "bf16"):
        (two / "unet" / f"diffusion_pytorch_model.{variant}.safetensors").write_bytes(b"")
    with pytest.raises(SourceError, match="holds the variants bf16, fp16 .* --variant"):
        weights_variant(two, None)


def test_plain_folder_loads_as_before(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    load_source(model="tiny").diffusers_pipeline("txt2img").save_pretrained(folder)
    assert weights_variant(folder, None) is None
    assert "variant" not in load_source(model_path=folder).info
