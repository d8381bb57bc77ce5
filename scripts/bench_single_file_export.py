"""Time and peak memory of ``export --model-path FILE`` on full-size single-file checkpoints (issue 38).

Each case writes a random-weight checkpoint of a preset in the original single-file layout (once, in its own process,
with scripts/make_single_file_checkpoints.py), then runs ``python cli.py export --model-path FILE`` as a child process:
wall time, the child's peak RSS (``os.wait4``), and the most memory in use on the machine while it ran (MemTotal -
MemAvailable, sampled every second; other processes included). Prints a table and writes JSON.

    python scripts/bench_single_file_export.py --case sd15:fp16:fp32 --work /tmp/bench-sf --json single-file-export.json
    python scripts/bench_single_file_export.py --case sdxl:fp16:fp16 --work /tmp/bench-sf --json single-file-export-xl.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffship.runtime.tables import format_table  # noqa: E402


@dataclass(frozen=True)
class Case:
    model: str
    file_dtype: str
    export_dtypes: str
    config: str | None = None
    """--config for export (models at other widths than their architecture's full size, e.g. the tiny ones)."""

    @classmethod
    def parse(cls, text: str) -> Case:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise SystemExit(f"--case {text!r}: give MODEL:FILE_DTYPE:EXPORT_DTYPES[:CONFIG], e.g. sd15:fp16:fp32")
        return cls(*parts)


@dataclass(frozen=True)
class Result:
    case: str
    file_bytes: int
    write_seconds: float
    export_seconds: float
    peak_rss_bytes: int
    machine_peak_used_bytes: int
    returncode: int
    last_line: str


def _meminfo() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields


def run_measured(command: list[str]) -> tuple[int, float, int, int, str]:
    """returncode, seconds, the child's peak RSS, the machine's peak used memory, the output's last line."""
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            info = _meminfo()
            peak[0] = max(peak[0], info["MemTotal"] - info["MemAvailable"])

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler.start()
    assert child.stdout is not None
    last = ""
    for line in child.stdout:
        sys.stderr.write(line)
        last = line.strip() or last
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, seconds, usage.ru_maxrss * 1024, peak[0], last


def run_case(case: Case, work: Path, exporter: str) -> Result:
    name = f"{case.model}-{case.file_dtype}"
    file = work / f"{name}.safetensors"
    write_seconds = 0.0
    if not file.is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_single_file_checkpoints.py"), "--model",
                        case.model, "--random-weights", "--dtype", case.file_dtype, "--out", str(file)], check=True)
        write_seconds = time.perf_counter() - start
    command = [sys.executable, str(ROOT / "cli.py"), "export", "--model-path", str(file), "--dtype", case.export_dtypes,
               "--exporter", exporter, "--force", "--out", str(work / f"{name}-{case.export_dtypes}-package"),
               *(["--config", case.config] if case.config else [])]
    code, seconds, rss, used, last = run_measured(command)
    return Result(f"{case.model} file {case.file_dtype} -> export {case.export_dtypes}", file.stat().st_size,
                  write_seconds, seconds, rss, used, code, last)


def host() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": _meminfo()["MemTotal"],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit.strip(),
            "load_average_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", required=True, metavar="MODEL:FILE_DTYPE:EXPORT_DTYPES[:CONFIG]",
                        help="e.g. sd15:fp16:fp32 (an fp16 SD 1.5 file exported to fp32); repeatable")
    parser.add_argument("--work", type=Path, required=True, help="folder for the checkpoint files and packages")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    parser.add_argument("--json", type=Path, default=Path("single-file-export.json"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    about = host()
    results = [run_case(Case.parse(text), args.work, args.exporter) for text in args.case]
    rows = [[r.case, f"{r.file_bytes / 1e9:.2f} GB", f"{r.export_seconds:.1f} s", f"{r.peak_rss_bytes / 2**30:.2f} GiB",
             f"{r.machine_peak_used_bytes / 2**30:.2f} GiB", "ok" if r.returncode == 0 else f"exit {r.returncode}"]
            for r in results]
    print(format_table(["case", "file", "export wall", "peak RSS", "machine peak used", "status"], rows))
    args.json.write_text(json.dumps({"host": about, "exporter": args.exporter,
                                     "results": [asdict(r) for r in results]}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
