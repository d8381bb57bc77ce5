"""Work folders a killed process left (core/files.py): a later run removes them, and never one whose owner still runs,
even when the owner's pid has since been given to another process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from diffship.core.files import _start_time, remove_stale_work
from tests.conftest import ROOT

HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from diffship.core.files import work_folder\n"
    "with work_folder(Path(sys.argv[1]), sys.argv[2]) as work:\n"
    "    print(work, flush=True)\n"
    "    time.sleep(600)\n"
)


def hold_work_folder(parent: Path, label: str) -> tuple[subprocess.Popen[str], Path]:
    """A real process inside ``work_folder(parent, label)``, and the folder it made."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(parent), label], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE)
    assert process.stdout is not None
    folder = Path(process.stdout.readline().strip())
    assert folder.is_dir() and folder.parent == parent, folder
    return process, folder


def test_remove_stale_work_removes_a_killed_process_folder_and_keeps_a_live_ones(tmp_path: Path) -> None:
    killed, left = hold_work_folder(tmp_path, "build-unet")
    live, kept = hold_work_folder(tmp_path, "build-vae_decoder")
    try:
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        assert left.is_dir()  # nothing runs after SIGKILL: the folder stays until someone removes it
        unrelated = tmp_path / "model.onnx.partial"  # not a work folder's name: never touched
        unrelated.mkdir()
        assert remove_stale_work(tmp_path) == [left]
        assert not left.exists() and kept.is_dir() and unrelated.is_dir()
        assert remove_stale_work(tmp_path) == [] and kept.is_dir()
    finally:
        live.kill()
        live.wait(timeout=30)
    assert remove_stale_work(tmp_path) == [kept]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times come from /proc")
def test_a_folder_whose_pid_now_names_another_process_is_removed(tmp_path: Path) -> None:
    # pids are reused: a folder records its owner's start time, so a later process with the same pid keeps nothing.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        started = _start_time(other.pid)
        assert started is not None
        same = tmp_path / f".build-unet.partial-{other.pid}-s{started}-abcd1234"
        reused = tmp_path / f".build-vae_decoder.partial-{other.pid}-s{started + 1}-abcd1234"
        without_start = tmp_path / f".build-text_encoder.partial-{other.pid}-abcd1234"  # no start time: pid only
        for folder in (same, reused, without_start):
            folder.mkdir()
        assert remove_stale_work(tmp_path) == [reused]
        assert same.is_dir() and without_start.is_dir()
    finally:
        other.kill()
        other.wait(timeout=30)
    assert sorted(remove_stale_work(tmp_path)) == sorted([same, without_start])
