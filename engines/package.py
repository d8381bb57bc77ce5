"""The model package on disk: ``manifest.json`` and the files it lists (DESIGN.md section 3).

The exporter writes a package; the engine builder adds engines to it; the runtime reads it. All three go through
the dataclasses here, so the manifest has one schema and one parser.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engines.specs import ComponentSpec, PipelineConstants, ShapeProfile, ShapeRequest

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("fp32", "fp16")
NUMPY_FLOAT = {"fp32": "float32", "fp16": "float16"}


class PackageError(Exception):
    """A model package is missing, malformed, or does not match its manifest."""


VERIFY_ENV = "DIFFSHIP_VERIFY"
"""Set to ``always`` to hash every file on every load instead of trusting the verification record."""


def _verification_record_path() -> Path:
    return Path(os.environ.get("DIFFSHIP_CACHE", Path.home() / ".cache" / "diffship")) / "verified.json"


def _file_identity(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]


def _recorded_digest(path: Path) -> str | None:
    """The sha256 recorded when this very file (same size, mtime, inode) was last hashed, if any."""
    if os.environ.get(VERIFY_ENV) == "always":
        return None
    try:
        record = json.loads(_verification_record_path().read_text(encoding="utf-8")).get(str(path.resolve()))
    except (OSError, ValueError):
        return None
    if isinstance(record, dict) and record.get("identity") == _file_identity(path):
        return str(record.get("sha256"))
    return None


def _remember_digest(path: Path, digest: str) -> None:
    """Best effort: a file's hash is remembered so an unchanged file is not hashed again at the next start."""
    record_path = _verification_record_path()
    try:
        records = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
        records = {k: v for k, v in records.items() if Path(k).exists()}
        records[str(path.resolve())] = {"identity": _file_identity(path), "sha256": digest}
        write_json_atomic(record_path, records)
    except (OSError, ValueError):
        pass


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: Path) -> FileEntry:
        return cls(sha256=sha256_file(path), bytes=path.stat().st_size)


@dataclass(frozen=True)
class ComponentVariant:
    """One exported ONNX model of a component, in one precision."""

    component: str
    dtype: str
    onnx: str
    """Path of ``model.onnx`` relative to the package root."""
    files: tuple[str, ...]
    """Every file the model needs (the ONNX file and its external data), relative to the package root."""
    spec: ComponentSpec
    verification: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "files": list(self.files), **self.spec.to_json(), "verification": self.verification}

    @classmethod
    def from_json(cls, component: str, dtype: str, data: Mapping[str, Any]) -> ComponentVariant:
        return cls(
            component=component,
            dtype=dtype,
            onnx=data["onnx"],
            files=tuple(data["files"]),
            spec=ComponentSpec.from_json(component, data),
            verification=data.get("verification", {}),
        )


@dataclass(frozen=True)
class EngineEntry:
    """One built engine (plan file) of a component."""

    component: str
    plan: str
    profile: ShapeProfile
    key: str
    build_seconds: float
    onnx_sha256: str
    onnx_dtype: str = "fp32"
    """Precision of the ONNX the engine was built from: its I/O tensors have that variant's dtypes."""
    precision_summary: str | None = None
    """Path (relative to the package) of the per-layer precision report written at build time."""
    layer_precisions: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "profile": self.profile.to_json(),
            "key": self.key,
            "build_seconds": self.build_seconds,
            "onnx_sha256": self.onnx_sha256,
            "onnx_dtype": self.onnx_dtype,
            "precision_summary": self.precision_summary,
            "layer_precisions": dict(self.layer_precisions),
        }

    @classmethod
    def from_json(cls, component: str, data: Mapping[str, Any]) -> EngineEntry:
        return cls(
            component=component,
            plan=data["plan"],
            profile=ShapeProfile.from_json(component, data["profile"]),
            key=data["key"],
            build_seconds=data["build_seconds"],
            onnx_sha256=data["onnx_sha256"],
            onnx_dtype=data.get("onnx_dtype", "fp32"),
            precision_summary=data.get("precision_summary"),
            layer_precisions=data.get("layer_precisions", {}),
        )


@dataclass(frozen=True)
class EngineSet:
    """The engines in one ``engines/<backend>-<arch>-<precision>/`` folder."""

    name: str
    backend: str
    library: str
    library_version: str
    archs: tuple[str, ...]
    precision: str
    request: ShapeRequest
    components: Mapping[str, EngineEntry]

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "library": self.library,
            "library_version": self.library_version,
            "archs": list(self.archs),
            "precision": self.precision,
            "request": self.request.to_json(),
            "components": {name: entry.to_json() for name, entry in self.components.items()},
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> EngineSet:
        return cls(
            name=name,
            backend=data["backend"],
            library=data["library"],
            library_version=data["library_version"],
            archs=tuple(data["archs"]),
            precision=data["precision"],
            request=ShapeRequest.from_json(data["request"]),
            components={c: EngineEntry.from_json(c, e) for c, e in data["components"].items()},
        )


@dataclass(frozen=True)
class Manifest:
    family: str
    source: Mapping[str, Any]
    constants: PipelineConstants
    export: Mapping[str, Any]
    components: Mapping[str, Mapping[str, ComponentVariant]]
    files: Mapping[str, FileEntry]
    engines: Mapping[str, EngineSet] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "family": self.family,
            "source": dict(self.source),
            "constants": self.constants.to_json(),
            "export": dict(self.export),
            "components": {
                name: {dtype: variant.to_json() for dtype, variant in variants.items()}
                for name, variants in self.components.items()
            },
            "engines": {name: engine_set.to_json() for name, engine_set in self.engines.items()},
            "files": {path: {"sha256": f.sha256, "bytes": f.bytes} for path, f in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PackageError(
                f"manifest schema version {version!r} is not supported by this diffship (it reads version "
                f"{SCHEMA_VERSION}); re-export the package with this version"
            )
        return cls(
            schema_version=version,
            family=data["family"],
            source=data["source"],
            constants=PipelineConstants.from_json(data["constants"]),
            export=data["export"],
            components={
                name: {dtype: ComponentVariant.from_json(name, dtype, v) for dtype, v in variants.items()}
                for name, variants in data["components"].items()
            },
            files={path: FileEntry(**entry) for path, entry in data["files"].items()},
            engines={name: EngineSet.from_json(name, e) for name, e in data.get("engines", {}).items()},
        )

    def with_files(self, root: Path, paths: Iterable[str]) -> Manifest:
        """A copy with ``paths`` (relative to ``root``) hashed and recorded."""
        files = dict(self.files)
        for rel in paths:
            files[rel] = FileEntry.of(root / rel)
        return replace(self, files=files)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader sees either the old file or the complete new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_package(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


@dataclass(frozen=True)
class ModelPackage:
    """A package directory and its parsed manifest."""

    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> ModelPackage:
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir():
            raise PackageError(f"{root} is not a directory; export one with `python cli.py export --out {root}`")
        if not manifest_path.is_file():
            raise PackageError(f"{root} is not a diffship model package (no {MANIFEST_NAME})")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PackageError(f"{manifest_path} cannot be read: {exc}") from exc
        try:
            return cls(root=root, manifest=Manifest.from_json(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise PackageError(f"{manifest_path} is malformed: {exc!r}") from exc

    @property
    def constants(self) -> PipelineConstants:
        return self.manifest.constants

    def path(self, relative: str) -> Path:
        return self.root / relative

    def dtypes(self) -> list[str]:
        """Precisions every component was exported in."""
        variant_sets = [set(v) for v in self.manifest.components.values()]
        common = set.intersection(*variant_sets) if variant_sets else set()
        return [d for d in DTYPES if d in common]

    def variant(self, component: str, dtype: str) -> ComponentVariant:
        variants = self.manifest.components.get(component)
        if variants is None:
            raise PackageError(
                f"package {self.root} has no component {component!r} "
                f"(it has {', '.join(self.manifest.components)})"
            )
        if dtype not in variants:
            raise PackageError(
                f"package {self.root} has no {dtype} export of {component} (it has {', '.join(variants)}); "
                f"export one with `python cli.py export ... --dtype {dtype}`"
            )
        return variants[dtype]

    def verify_file(self, relative: str) -> Path:
        """The absolute path of ``relative`` after checking its size and sha256 against the manifest."""
        entry = self.manifest.files.get(relative)
        path = self.path(relative)
        if entry is None:
            raise PackageError(f"{relative} is not listed in {self.root / MANIFEST_NAME}")
        if not path.is_file():
            raise PackageError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != entry.bytes or self._digest(path) != entry.sha256:
            raise PackageError(
                f"{path} does not match the sha256 recorded in the manifest: the file was modified or is incomplete; "
                "re-export the package (or rebuild the engines)"
            )
        return path

    @staticmethod
    def _digest(path: Path) -> str:
        recorded = _recorded_digest(path)
        if recorded is not None:
            return recorded
        digest = sha256_file(path)
        _remember_digest(path, digest)
        return digest

    def verify_all(self) -> list[str]:
        """Problems with any listed file (missing, wrong size or digest); empty when the package is intact."""
        problems = []
        for relative in self.manifest.files:
            try:
                self.verify_file(relative)
            except PackageError as exc:
                problems.append(str(exc))
        return problems

    def write_manifest(self, manifest: Manifest) -> ModelPackage:
        write_json_atomic(self.root / MANIFEST_NAME, manifest.to_json())
        return ModelPackage(self.root, manifest)
