"""scripts/make_single_file_checkpoints.py writes the original single-file layout: diffusers' own from_single_file reads
every file back to exactly the weights it came from (fp32), or to those weights rounded to the stored dtype."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from diffship.exporter.single_file import read_back  # noqa: E402
from diffship.exporter.sources import load_source  # noqa: E402
from scripts.make_single_file_checkpoints import DTYPES, differences, main, to_original, write_checkpoint  # noqa: E402
from tests.exporter.single_files import TINY_MODELS  # noqa: E402


def assert_reads_back(model: str, out: Path, dtype: str, include_vae: bool) -> None:
    source = load_source(model=model)
    write_checkpoint(to_original(source, include_vae=include_vae), out, dtype)
    loaded = read_back(out, model, include_vae)
    assert set(loaded) == set(source.modules()) - ({"vae"} if not include_vae else set())
    for component, module in loaded.items():
        expected = source.modules()[component]
        if dtype != "fp32":
            expected = copy.deepcopy(expected).to(DTYPES[dtype]).float()
        assert list(differences(expected, module)) == [], component
        assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("model", TINY_MODELS)
def test_make_single_file_checkpoints_fp32_reads_back_exactly(model: str, tmp_path: Path) -> None:
    assert_reads_back(model, tmp_path / f"{model}.safetensors", "fp32", include_vae=True)


@pytest.mark.parametrize("model,dtype", [("tiny-xl", "fp16"), ("tiny-v", "bf16")])
def test_make_single_file_checkpoints_half_without_vae_reads_back_rounded(model: str, dtype: str,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / f"{model}-{dtype}.safetensors"
    assert_reads_back(model, out, dtype, include_vae=False)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        keys = list(handle.keys())
        assert {handle.get_slice(k).get_dtype() for k in keys} == {dtype.upper().replace("FP", "F")}
    assert not any(k.startswith("first_stage_model.") for k in keys)


def test_make_single_file_checkpoints_differences_names_a_changed_tensor() -> None:
    source = load_source(model="tiny")
    changed = copy.deepcopy(source.unet)
    with torch.no_grad():
        changed.conv_in.bias[0] += 1e-3
    assert list(differences(source.unet, changed)) == ["conv_in.bias: differs"]


def test_make_single_file_checkpoints_command_checks_its_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tiny-fp16.safetensors"
    main(["--model", "tiny", "--dtype", "fp16", "--out", str(out), "--check"])
    printed = capsys.readouterr().out
    assert "checked: diffusers' from_single_file reads back exactly these weights" in printed
    assert out.is_file() and not list(tmp_path.glob(".*.partial"))
