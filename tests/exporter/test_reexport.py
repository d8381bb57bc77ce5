"""Exporting again over a package: built engines whose source ONNX did not change are kept (and the others dropped,
saying so), and a file changed in place makes the package out of date for export as it is for the runtime."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from diffship.core.families.stable_diffusion import COMPONENTS
from diffship.core.package import ModelPackage
from diffship.engines.ort.build import build_ort_engines
from diffship.exporter.onnx_export import ExportOptions
from diffship.exporter.package import ExportRequest, export_package
from tests.conftest import run_cli

pytestmark = pytest.mark.export


def copy_of(package: Path, tmp_path: Path) -> tuple[Path, ExportRequest]:
    """A copy of the shared legacy ``tiny`` export, and the request that wrote it (the copy is up to date for it)."""
    out = tmp_path / "pkg"
    shutil.copytree(package, out)
    request = ExportRequest(out=out, model="tiny", options=ExportOptions(exporter="legacy"))
    assert export_package(request).skipped
    return out, request


def test_force_reexport_keeps_engines_built_from_unchanged_onnx(tiny_legacy_package: Path, tmp_path: Path) -> None:
    out, request = copy_of(tiny_legacy_package, tmp_path)
    created = ModelPackage.open(out).manifest.export["created_utc"]
    set_name = build_ort_engines(out).engine_set
    lines: list[str] = []
    forced = export_package(ExportRequest(**{**request.__dict__, "force": True}), on_progress=lines.append)
    assert not forced.skipped and len(forced.reports) == len(COMPONENTS)  # exported again although up to date
    package = ModelPackage.open(out)
    assert package.manifest.export["created_utc"] >= created
    components = set(package.manifest.engines[set_name].components)
    assert components == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert package.verify_all() == [] and any("kept the engines" in line for line in lines)

    lines.clear()
    export_package(ExportRequest(**{**request.__dict__, "seed": 7}), on_progress=lines.append)  # other weights
    package = ModelPackage.open(out)
    assert set_name not in package.manifest.engines and not (out / "engines" / set_name).exists()
    assert sum("dropped, the ONNX it was built from changed" in line for line in lines) == len(components)


def test_a_file_changed_in_place_is_not_up_to_date(tiny_legacy_package: Path, tmp_path: Path) -> None:
    out, request = copy_of(tiny_legacy_package, tmp_path)
    onnx = out / "onnx" / "vae_decoder" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-100] ^= 0xFF  # same size
    onnx.write_bytes(bytes(data))
    assert not export_package(request).skipped  # re-exported, as generate's advice says
    assert ModelPackage.open(out).verify_all() == []
    result = run_cli("verify", "--package", str(out), "--strict")
    assert result.returncode == 0 and "files intact" in result.stdout
    onnx.write_bytes(bytes(data))
    result = run_cli("verify", "--package", str(out))
    assert result.returncode == 1 and "does not match the sha256" in result.stderr and "Traceback" not in result.stderr
