"""Writing so that a reader never sees half of anything: atomic files, staged folders, publishing, a manifest lock.

Everything long (an export, an engine build) is written into a hidden work folder beside its destination and moved
into place with ``os.replace`` only when complete; a crash leaves a hidden ``.name.partial-*`` folder behind, never a
file a later run would take for finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(path: Path) -> None:
    """Temporary files and folders are private (0600/0700); published ones read like any other."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so that a reader sees either the old file or the complete new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _make_readable(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


_LEFTOVER = re.compile(r"^\..+\.(partial|old)-(?:(\d+)-(?:s(\d+)-)?)?[^/]*$")
LEGACY_LEFTOVER_AGE_S = 3600.0
"""A work folder without the owner's pid in its name (written by diffship 0.1) is stale after this long."""


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc/<pid>/stat``), or None where there is no
    /proc or no such process: with the pid it names one process for good, since pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(pid: int, started: int | None) -> bool:
    """Whether the process that made a work folder still runs: ``pid`` is alive and, where the folder recorded when
    its owner started, it is still that process (not a later one given the same pid)."""
    if pid == os.getpid():
        return True
    if not _alive(pid):
        return False
    if started is None:
        return True
    now = _start_time(pid)
    return now is None or now == started


def _owner_tag() -> str:
    """``<pid>-s<start>`` (``<pid>`` where the start time cannot be read): who owns a work folder, in its name."""
    started = _start_time(os.getpid())
    return f"{os.getpid()}-s{started}" if started is not None else str(os.getpid())


def remove_stale_work(parent: Path) -> list[Path]:
    """Remove work folders in ``parent`` that a killed run left behind (their owner's process is gone); returns
    them. A run killed by SIGKILL cannot clean up after itself: the next run in the same place does. A folder whose
    owner still runs is never touched."""
    removed = []
    try:
        entries = list(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        owner, started = match.group(2), match.group(3)
        if owner is not None and _owner_alive(int(owner), int(started) if started is not None else None):
            continue
        if owner is None and time.time() - entry.stat().st_mtime < LEGACY_LEFTOVER_AGE_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    if removed:
        log.warning("removed %d work folder(s) left by interrupted runs: %s", len(removed),
                    ", ".join(str(p) for p in removed))
    return removed


@contextlib.contextmanager
def work_folder(parent: Path, label: str) -> Iterator[Path]:
    """A hidden scratch folder in ``parent`` (same file system, so its files move into place with a rename),
    removed when the block ends, whether it succeeded or not. Its name records this process (pid and start time), so
    that a later run can tell one left by a killed process (``remove_stale_work``)."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{label}.partial-{_owner_tag()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish_files(work: Path, names: Sequence[str], destination: Path) -> list[Path]:
    """Move ``work/<name>`` for each name into ``destination``, each with one rename, in the order given (put a file
    that names another, such as an ONNX graph naming its external data, last)."""
    destination.mkdir(parents=True, exist_ok=True)
    _make_readable(destination)
    published = []
    for name in names:
        source = work / name
        _make_readable(source)
        os.replace(source, destination / name)
        published.append(destination / name)
    return published


def publish_folder(staging: Path, destination: Path) -> None:
    """Swap a finished staging folder in for ``destination``; what was there before is removed afterwards."""
    for path in (staging, *staging.rglob("*")):
        _make_readable(path)
    trash = None
    if destination.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-{_owner_tag()}-", dir=destination.parent))
        os.replace(destination, trash / "previous")
    os.replace(staging, destination)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the block: read-modify-write of one file by several processes at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
