"""Files are loaded only if their sha256 matches the manifest; an unchanged file is not hashed again at every start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import diffship.core.integrity as integrity
from diffship.core.errors import PackageError
from diffship.core.package import ModelPackage


@pytest.fixture
def copy(tiny_package: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pkg"
    shutil.copytree(tiny_package, target)
    return target


def test_unchanged_file_is_hashed_once(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path, *a: calls.append(path) or real(path, *a))
    ModelPackage.open(copy).verify_file("onnx/unet/model.onnx")
    ModelPackage.open(copy).verify_file("onnx/unet/model.onnx")
    assert len(calls) == 1


def test_changed_file_of_same_size_is_caught_after_a_recorded_hash(copy: Path) -> None:
    package = ModelPackage.open(copy)
    package.verify_file("onnx/unet/model.onnx")  # recorded as good
    path = copy / "onnx" / "unet" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(PackageError, match="sha256"):
        ModelPackage.open(copy).verify_file("onnx/unet/model.onnx")


def test_always_mode_hashes_every_time(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path, *a: calls.append(path) or real(path, *a))
    monkeypatch.setenv("DIFFSHIP_VERIFY", "always")
    ModelPackage.open(copy).verify_file("onnx/vae_decoder/model.onnx")
    ModelPackage.open(copy).verify_file("onnx/vae_decoder/model.onnx")
    assert len(calls) == 2


def test_missing_and_unlisted_files_are_refused(copy: Path) -> None:
    (copy / "onnx" / "vae_encoder" / "model.onnx").unlink()
    package = ModelPackage.open(copy)
    with pytest.raises(PackageError, match="missing"):
        package.verify_file("onnx/vae_encoder/model.onnx")
    with pytest.raises(PackageError, match="not listed"):
        package.verify_file("onnx/vae_encoder/other.onnx")


def test_an_in_place_edit_with_its_mtime_put_back_is_still_caught(copy: Path) -> None:
    # The record keys on ctime too, which cannot be set back from user space.
    ModelPackage.open(copy).verify_file("onnx/unet/model.onnx")
    path = copy / "onnx" / "unet" / "model.onnx"
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    with pytest.raises(PackageError, match="sha256"):
        ModelPackage.open(copy).verify_file("onnx/unet/model.onnx")
