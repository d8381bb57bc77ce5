"""File digests, and the verification record that spares re-hashing unchanged multi-GB files at every start.

The first load of a file hashes it and records ``(size, mtime, ctime, inode, device) -> sha256`` in
``$DIFFSHIP_CACHE/verified.json`` (default ``~/.cache/diffship``); a later load of the very same file trusts the record.
``DIFFSHIP_VERIFY=always`` hashes every file on every load. What each mode protects against: docs/design.md,
"Integrity".
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from diffship.core.files import write_json_atomic

VERIFY_ENV = "DIFFSHIP_VERIFY"
"""Set to ``always`` to hash every file on every load instead of trusting the verification record."""


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("DIFFSHIP_CACHE", Path.home() / ".cache" / "diffship"))


def _record_path() -> Path:
    return cache_dir() / "verified.json"


def _identity(path: Path) -> list[int]:
    # ctime cannot be set from user space: a file rewritten with its mtime put back still changes identity.
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


_records_read: tuple[tuple[str, list[int]], dict[str, object]] | None = None
"""The verification record as last parsed, with the identity of the file it came from: a package opens a dozen
files and the record is parsed once, not once per file, until the file changes."""


def _records() -> dict[str, object]:
    global _records_read
    path = _record_path()
    identity = (str(path), _identity(path))
    if _records_read is None or _records_read[0] != identity:
        records = json.loads(path.read_text(encoding="utf-8"))
        _records_read = (identity, records if isinstance(records, dict) else {})
    return _records_read[1]


def _recorded_digest(path: Path) -> str | None:
    if os.environ.get(VERIFY_ENV) == "always":
        return None
    try:
        record = _records().get(str(path.resolve()))
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(record, dict) and record.get("identity") == _identity(path):
        return str(record.get("sha256"))
    return None


def _remember_digest(path: Path, digest: str) -> None:
    """Best effort: a failure to write the record only means the next start hashes again."""
    record_path = _record_path()
    try:
        records = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        records = {k: v for k, v in records.items() if Path(k).exists()}
        records[str(path.resolve())] = {"identity": _identity(path), "sha256": digest}
        write_json_atomic(record_path, records)
    except (OSError, ValueError, AttributeError):
        pass


def file_digest(path: Path) -> str:
    """sha256 of ``path``: from the verification record when this very file was hashed before, else computed."""
    recorded = _recorded_digest(path)
    if recorded is not None:
        return recorded
    digest = sha256_file(path)
    _remember_digest(path, digest)
    return digest
