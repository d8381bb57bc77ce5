"""``bench-vae`` on the tiny preset's VAE: every case measured in its own process, one row per case, the JSON written
with the tile counts diffusers' tiling makes (no figure is asserted: figures are the report, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffship.cli import cli

pytestmark = pytest.mark.slow  # exports a VAE and starts a process per case


def test_bench_vae_measures_every_case_in_its_own_process(tmp_path: Path) -> None:
    out = tmp_path / "vae.json"
    result = CliRunner().invoke(cli, ["bench-vae", "--model", "tiny", "--sizes", "128,256", "--tile", "64",
                                      "--work", str(tmp_path / "vae"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cases = {(case["size"], case["mode"]): case for case in report["cases"]}
    assert set(cases) == {(size, mode) for size in (128, 256) for mode in ("untiled", "tiled", "diffusers-tiled")}
    assert all("error" not in case and case["peak_mb"] >= case["decode_mb"] >= 0 for case in cases.values())
    assert [cases[(256, mode)]["tiles"] for mode in ("untiled", "tiled", "diffusers-tiled")] == [1, 36, 36]
    assert "256        tiled" in result.output and (tmp_path / "vae" / "ready.json").exists()
    slow = CliRunner().invoke(cli, ["bench-vae", "--model", "tiny", "--sizes", "512", "--modes", "diffusers-tiled",
                                    "--tile", "64", "--timeout", "1", "--work", str(tmp_path / "vae"), "--json", str(out)])
    assert slow.exit_code == 0, slow.output
    assert json.loads(out.read_text())["cases"][0]["error"] == "timed out after 1s"


def test_bench_vae_refuses_an_unknown_mode(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["bench-vae", "--model", "tiny", "--modes", "tiled,fast", "--work", str(tmp_path)])
    assert result.exit_code == 2 and "fast: give some of untiled, tiled, diffusers-tiled" in result.output


def test_cases_beyond_the_available_memory_are_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffship.bench import vae_tiles
    from diffship.runtime import requests

    monkeypatch.setattr(requests, "available_memory", lambda: 4 * 2**30)
    assert vae_tiles._too_big("untiled", 2048, 512) == "not run: needs about 13.0 GiB, 4.0 GiB available"
    assert vae_tiles._too_big("tiled", 2048, 512) is None
    assert vae_tiles._too_big("diffusers-tiled", 2048, 512) is None
