"""The one build orchestrator (engines/build.py) with a builder of our own: up-to-date skips, nothing published when a
check fails, and concurrent builds of different sets on one package that both land in the manifest."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from diffship.core.manifest import EngineEntry, EngineSet, OrtEngineEntry, OrtEngineSet
from diffship.core.package import ModelPackage
from diffship.engines.build import BuildJob, Compiled, build_engine_set
from diffship.engines.errors import EngineError
from tests.conftest import ROOT
from tests.fakes import write_package

COMPONENTS = ("text_encoder", "unet")


class CopyBuilder:
    """Builds an 'engine' that is a text file naming its component; optionally fails its check."""

    backend = "ort"

    def __init__(self, name: str, fail_check: bool = False, version: str = "1") -> None:
        self.name, self.fail_check, self.version, self.compiled = name, fail_check, version, []

    def set_name(self, package: ModelPackage) -> str:
        return self.name

    def job(self, package: ModelPackage, component: str, progress: Callable[[str], None]) -> BuildJob[None]:
        variant = package.variant(component, "fp32")
        key = hashlib.sha256(f"{component}-{self.version}".encode()).hexdigest()
        return BuildJob(component, variant, "0" * 64, key, None)

    def compile(self, package: ModelPackage, job: BuildJob[None], work: Path,
                progress: Callable[[str], None]) -> Compiled[None]:
        self.compiled.append(job.component)
        (work / f"{job.component}.onnx").write_text(f"{job.component} built by {self.name}\n")
        return Compiled((f"{job.component}.onnx",), 0.01, None)

    def verify(self, package: ModelPackage, job: BuildJob[None], compiled: Compiled[None], work: Path,
               progress: Callable[[str], None]) -> dict[str, Any]:
        if self.fail_check:
            raise EngineError(f"{job.component}: misses the bar")
        return {"passed": True}

    def entry(self, set_name: str, job: BuildJob[None], compiled: Compiled[None]) -> EngineEntry:
        return OrtEngineEntry(job.component, f"engines/{set_name}/{job.component}.onnx", job.key, compiled.seconds,
                              job.source_sha256, "fp32", 0)

    def engine_set(self, set_name: str, components: Mapping[str, EngineEntry]) -> EngineSet:
        entries = {n: e for n, e in components.items() if isinstance(e, OrtEngineEntry)}
        return OrtEngineSet(set_name, "1.0", "cpu-test", "fp32", entries)


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return write_package(tmp_path / "pkg")


def test_a_build_is_recorded_and_a_second_one_skipped(package: Path) -> None:
    builder = CopyBuilder("ort-cpu-test-fp32")
    outcome = build_engine_set(package, builder, COMPONENTS)
    assert [c.skipped for c in outcome.components] == [False, False]
    opened = ModelPackage.open(package)
    assert set(opened.manifest.engines["ort-cpu-test-fp32"].components) == set(COMPONENTS)
    assert opened.verify_all() == []
    again = build_engine_set(package, builder, COMPONENTS)
    assert [c.skipped for c in again.components] == [True, True] and builder.compiled == list(COMPONENTS)
    changed = build_engine_set(package, CopyBuilder("ort-cpu-test-fp32", version="2"), ("unet",))
    assert not changed.components[0].skipped


def test_a_failed_check_publishes_and_records_nothing(package: Path) -> None:
    before = ModelPackage.open(package).manifest
    with pytest.raises(EngineError, match="misses the bar"):
        build_engine_set(package, CopyBuilder("ort-cpu-test-fp32", fail_check=True), COMPONENTS)
    assert ModelPackage.open(package).manifest == before
    assert not (package / "engines" / "ort-cpu-test-fp32").exists()
    assert not list((package / "engines").glob(".*partial*"))


def test_a_build_removes_what_a_killed_build_left_even_when_nothing_needs_building(package: Path) -> None:
    # The defect: after SIGKILL the work folder stayed until a later run happened to build that component.
    from tests.core.test_files_stale_work import hold_work_folder

    builder = CopyBuilder("ort-cpu-test-fp32")
    build_engine_set(package, builder, COMPONENTS)
    killed = [hold_work_folder(package / "engines", "build-unet"),
              hold_work_folder(package / "onnx" / "unet", "fp16")]  # where an fp16 conversion stages
    live, live_folder = hold_work_folder(package / "engines", "build-vae_decoder")
    try:
        for process, _ in killed:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert all(folder.is_dir() for _, folder in killed)
        again = build_engine_set(package, builder, COMPONENTS)
        assert all(c.skipped for c in again.components)  # nothing compiled, and still cleaned up
        assert not any(folder.exists() for _, folder in killed)
        assert live_folder.is_dir()  # another build still running keeps its folder
    finally:
        live.kill()
        live.wait(timeout=30)
    assert ModelPackage.open(package).verify_all() == []


def test_concurrent_builds_of_different_sets_both_land(package: Path) -> None:
    errors: list[BaseException] = []

    def build(name: str) -> None:
        try:
            for _ in range(5):
                build_engine_set(package, CopyBuilder(name, version=str(_)), COMPONENTS)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(f"ort-cpu-test{i}-fp32",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    manifest = ModelPackage.open(package).manifest
    assert {f"ort-cpu-test{i}-fp32" for i in range(3)} <= set(manifest.engines)
    assert ModelPackage.open(package).verify_all() == []


def test_build_ort_and_build_trt_at_the_same_time_both_land(tiny_package: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_package, copy)
    commands = [
        ["build-ort", "--package", str(copy), "--components", "unet,vae_decoder"],
        ["build-trt", "--package", str(copy), "--backend", "trt-rtx", "--arch", "sm89", "--components",
         "text_encoder,vae_decoder", "--batch", "1", "--static"],
    ]
    running = [subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *c], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for c in commands]
    for process in running:
        _, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-2000:]
    manifest = ModelPackage.open(copy).manifest
    kinds = {type(s).__name__: set(s.components) for s in manifest.engines.values()}
    assert kinds == {"OrtEngineSet": {"unet", "vae_decoder"}, "TrtEngineSet": {"text_encoder", "vae_decoder"}}
    assert ModelPackage.open(copy).verify_all() == []
