"""scripts/bench_single_file_export.py on a tiny model: it writes the file, exports it in a child process, and reports
the child's time and peak memory in a table and in JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # a tiny export in a child process
def test_bench_single_file_export_reports_time_and_peak_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_single_file_export.py"), "--case",
                          "tiny:fp16:fp32:tiny", "--exporter", "legacy", "--work", str(tmp_path / "work"), "--json",
                          str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "peak RSS" in run.stdout and "tiny file fp16 -> export fp32" in run.stdout
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["returncode"] == 0 and result["last_line"].startswith("package:")
    assert 100 * 2**20 < result["peak_rss_bytes"] < 64 * 2**30
    assert result["export_seconds"] > 0 and result["file_bytes"] == (tmp_path / "work" / "tiny-fp16.safetensors").stat().st_size
    assert {"host", "cpu", "cores", "date", "commit"} <= set(report["host"])
    assert (tmp_path / "work" / "tiny-fp16-fp32-package" / "manifest.json").is_file()
