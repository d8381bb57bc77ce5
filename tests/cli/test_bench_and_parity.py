"""``cli.py bench --quick`` (a smoke test: artifacts, not timings) and ``cli.py parity`` (passes on the tiny models,
fails on a package whose ONNX was deliberately perturbed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from diffship.core.package import ModelPackage
from tests.conftest import ROOT, run_cli


def test_bench_quick_writes_table_json_and_plots(tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench" / "bench.json"
    result = run_cli("bench", "--package", str(tiny_package), "--quick", "--json", str(out),
                     env={"DIFFSHIP_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vs diffusers" in result.stdout and "stage breakdown" in result.stdout and "cold start" in result.stdout
    data = json.loads(out.read_text())
    contenders = {r["contender"] for r in data["summary"]}
    assert any(c.startswith("diffusers") for c in contenders) and any(c.startswith("diffship ort") for c in contenders)
    assert {r["steps"] for r in data["runs"]} == {1, 2}
    for row in data["summary"]:
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert set(row["stages_median_s"]) == {"tokenize", "text_encoder", "unet", "scheduler_and_loop", "vae_decode"}
    runtime_rows = [r for r in data["summary"] if r["contender"].startswith("diffship")]
    assert all(0 <= r["outside_engines_share"] <= 1 for r in runtime_rows)
    assert "first-call warm-up" in result.stdout
    for name, figures in data["cold_start"].items():
        assert figures["first_image_s"] > figures["import_s"] > 0 and figures["peak_rss_bytes"] > 0, name
        stages = figures["stages"]
        # interpreter_s is launch -> the child's first line: negative would mean the child's clock conversion is wrong.
        assert all(seconds >= 0 for seconds in stages.values()), (name, stages)
        assert stages["image_s"] == min(figures["generate_s"], figures["again_s"]), name
        if name.startswith("diffship"):
            assert {"text_encoder", "unet", "vae_decode"} <= set(figures["components"]), name
    assert data["machine"]["versions"]["onnxruntime"]
    for plot in ("latency_vs_steps.png", "stage_breakdown.png"):
        assert (out.parent / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli_in(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python /path/to/cli.py ARGS`` from ``folder``, as a user outside the repository runs it."""
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=folder,
                          env={**os.environ, **env}, timeout=900)


def elsewhere(tmp_path: Path, **links: Path) -> Path:
    """A working folder outside the repository, with ``links`` (name -> folder) to reach things by relative paths
    that mean nothing from the repository root."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for name, target in links.items():
        (folder / name).symlink_to(target, target_is_directory=True)
        assert not (ROOT / name).exists()
    return folder


def test_bench_with_relative_paths_from_another_folder_writes_every_figure(tiny_package: Path, tmp_path: Path) -> None:
    # The cold-start processes run in the repository: a relative package or cache folder must reach them resolved.
    folder = elsewhere(tmp_path, my_packages=tiny_package.parent)
    done = run_cli_in(folder, "bench", "--package", f"my_packages/{tiny_package.name}", "--steps", "1", "--repeats", "1",
                      "--json", "out/bench.json", env={"DIFFSHIP_CACHE": "cache"})
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((folder / "out" / "bench.json").read_text())
    assert list(data["cold_start"]) == ["diffusers", "diffship ort", "diffship ort, first start"]
    assert all(figures["first_image_s"] > 0 for figures in data["cold_start"].values())
    assert list((folder / "cache").glob("reference-*/model_index.json"))  # the cache folder as the user meant it


def test_bench_lora_with_relative_paths_from_another_folder_measures_both_sides(
    tiny_package: Path, lora_files: dict[str, Path], tmp_path: Path
) -> None:
    folder = elsewhere(tmp_path, my_packages=tiny_package.parent, my_loras=lora_files["r4"].parent)
    done = run_cli_in(folder, "bench-lora", "--package", f"my_packages/{tiny_package.name}", "--lora", "my_loras/r4.safetensors",
                      "--lora", "my_loras/r8.safetensors", "--rounds", "1", "--processes", "1", "--json", "lora.json",
                      env={"DIFFSHIP_CACHE": "cache"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((folder / "lora.json").read_text())["summary"]
    assert all(summary[side][f"to_{kind}"]["count"] == 1 for side in ("diffship", "diffusers") for kind in "AB")


# Every scheduler's end-to-end parity is tests/parity/test_pipeline_parity.py's; here the command, on a few.
@pytest.mark.parametrize("model,schedulers", [("tiny-v", "pndm,heun,DPM++ SDE Karras")])
def test_parity_passes_on_tiny_models(model: str, schedulers: str, packages: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("parity", "--package", str(packages[model]), "--schedulers", schedulers, "--steps", "8",
                     "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] and len(report["cases"]) == 2 * 3  # x guidance 1 and 7.5
    assert all(case["max_pixel_diff"] <= 2 for case in report["cases"])
    assert (tmp_path / "parity-worst.png").is_file()


def test_parity_fails_on_a_perturbed_onnx(tiny_package: Path, tmp_path: Path) -> None:
    broken = tmp_path / "perturbed"
    shutil.copytree(tiny_package, broken)
    path = broken / "onnx" / "unet" / "model.onnx"
    model = onnx.load(str(path))
    weights = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight tensor
    array = numpy_helper.to_array(weights)
    noisy = array + np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype) * float(array.std())
    weights.CopyFrom(numpy_helper.from_array(noisy, weights.name))
    onnx.save(model, str(path))
    package = ModelPackage.open(broken)
    # Re-hash so the package still loads: the parity check, not the digest check, must catch the change.
    package.write_manifest(package.manifest.with_files(broken, ["onnx/unet/model.onnx"]))
    assert ModelPackage.open(broken).verify_all() == []
    result = run_cli("parity", "--package", str(broken), "--schedulers", "ddim,euler_a", "--guidance", "7.5",
                     "--steps", "6", "--out", str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL" in result.stdout and "miss the bar" in result.stderr
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"] is False


def test_parity_rejects_unknown_scheduler(tiny_package: Path, tmp_path: Path) -> None:
    result = run_cli("parity", "--package", str(tiny_package), "--schedulers", "warp", "--out", str(tmp_path))
    assert result.returncode == 2 and "unknown scheduler 'warp'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backends,fragment", [("ort-fp8", "'fp8' is not fp32, fp16, int8, graphs or exported"),
                                               ("onnx", "the backend is ort or trt")])
def test_bench_refuses_unknown_contenders(tiny_package: Path, backends: str, fragment: str) -> None:
    result = run_cli("bench", "--package", str(tiny_package), "--backends", backends, "--quick")
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_parity_on_weights_that_differ_from_the_export_is_one_error_line(tiny_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["weights_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("parity", "--package", str(copy), "--schedulers", "ddim", "--guidance", "7.5", "--steps", "2",
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "digest mismatch" in errors[0], result.stderr
