"""Interrupted long commands: Ctrl-C and SIGTERM stop them (also inside TensorRT's builder) and leave nothing half
written; after SIGKILL, which nothing can catch, the next run removes what the killed one left and completes."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from diffship.core.package import ModelPackage
from tests.conftest import ROOT

pytestmark = pytest.mark.export


class Running:
    """A cli.py process whose stderr is read as it comes, so a test can signal it at a chosen moment."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, marker: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never saw {marker!r}:\n{''.join(self.lines)[-2000:]}")
            time.sleep(0.05)

    def stop(self, signum: int, timeout: float = 120) -> tuple[int, str]:
        self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, "".join(self.lines)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_export_stops_cleanly_on_sigterm_and_recovers_after_sigkill(tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    export = ("export", "--model", "tiny", "--exporter", "legacy", "--out", str(out))
    running = Running(*export)
    running.wait_for("unet fp32: exporting")
    code, stderr = running.stop(signal.SIGTERM)
    assert code == 143 and "terminated" in stderr and "Traceback" not in stderr
    assert not out.exists() and leftovers(tmp_path) == []

    killed = Running(*export)
    killed.wait_for("unet fp32: exporting")
    code, _ = killed.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL and leftovers(tmp_path)  # nothing could clean up after SIGKILL
    rerun = subprocess.run([sys.executable, str(ROOT / "cli.py"), *export], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "left by interrupted runs" in rerun.stderr and leftovers(tmp_path) == []
    assert ModelPackage.open(out).verify_all() == []


def test_build_trt_stops_on_ctrl_c_inside_the_builder(tiny_package: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    package = tmp_path / "tiny"
    shutil.copytree(tiny_package, package)
    build = ("build-trt", "--package", str(package), "--backend", "trt-rtx", "--arch", "sm89", "--components", "unet",
             "--opt-level", "5")
    running = Running(*build)
    running.wait_for("unet: building from")
    time.sleep(0.5)  # inside build_serialized_network
    started = time.monotonic()
    code, stderr = running.stop(signal.SIGINT)
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert time.monotonic() - started < 60
    manifest = json.loads((package / "manifest.json").read_text())
    assert not manifest["engines"] and leftovers(package / "engines") == []
    # The rerun completes at the default optimisation level: level 5 was only there to keep the builder busy.
    rerun = subprocess.run([sys.executable, str(ROOT / "cli.py"), *build[:-2]], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert ModelPackage.open(package).verify_all() == []


def test_build_ort_recovers_after_sigkill(tiny_package: Path, tmp_path: Path) -> None:
    package = tmp_path / "tiny"
    shutil.copytree(tiny_package, package)
    running = Running("build-ort", "--package", str(package))
    running.wait_for("unet: fusing attention")
    running.stop(signal.SIGKILL)
    rerun = subprocess.run([sys.executable, str(ROOT / "cli.py"), "build-ort", "--package", str(package)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    opened = ModelPackage.open(package)
    assert opened.verify_all() == [] and leftovers(package / "engines") == []
    assert {"text_encoder", "unet", "vae_decoder"} <= set(next(iter(opened.manifest.engines.values())).components)
