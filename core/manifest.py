"""``manifest.json``: the one schema every layer reads and writes (docs/design.md, "The model package").

Schema version 2 types engine sets per backend: ``OrtEngineSet`` (ONNX Runtime graphs from ``build-ort``) and
``TrtEngineSet`` (TensorRT / TensorRT-RTX plans from ``build-trt``). Version 1 manifests are read and upgraded in
memory (the next write stores version 2). Keys a newer writer adds within a version are ignored on reading, and
engine sets of a backend this diffship does not know are kept as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from core.errors import PackageError
from core.integrity import sha256_file
from core.specs import ComponentSpec, PipelineConstants, ShapeProfile, ShapeRequest, known_fields

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST_NAME = "manifest.json"
DTYPES = ("fp32", "fp16")
NUMPY_FLOAT = {"fp32": "float32", "fp16": "float16"}


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
    """Path of the ONNX file relative to the package root."""
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


# ---------------------------------------------------------------------------------------------- engine sets


class EngineEntry(Protocol):
    """What every backend's record of one built engine has."""

    @property
    def component(self) -> str: ...

    @property
    def key(self) -> str:
        """Digest of everything the engine was built from; a rebuild with the same key is skipped."""
        ...

    @property
    def source_onnx_sha256(self) -> str: ...

    @property
    def source_dtype(self) -> str:
        """Precision of the ONNX the engine was built from: its I/O tensors have that variant's dtypes."""
        ...

    @property
    def files(self) -> tuple[str, ...]: ...


class EngineSet(Protocol):
    """What every backend's record of one ``engines/<name>/`` folder has."""

    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str: ...

    @property
    def precision(self) -> str: ...

    @property
    def components(self) -> Mapping[str, EngineEntry]: ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class OrtEngineEntry:
    """A ``build-ort`` graph: attention fused (and, for the CPU, optimised for this CPU family)."""

    component: str
    graph: str
    data_files: tuple[str, ...]
    key: str
    build_seconds: float
    source_onnx_sha256: str
    source_dtype: str
    fused_attention: int
    report: str | None = None
    """Path of the build report (fusion count, verification against the exported graph)."""

    @property
    def files(self) -> tuple[str, ...]:
        return (self.graph, *self.data_files)

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.graph, "data_files": list(self.data_files), "key": self.key,
                "build_seconds": self.build_seconds, "source_onnx_sha256": self.source_onnx_sha256,
                "source_dtype": self.source_dtype, "fused_attention": self.fused_attention, "report": self.report}

    @classmethod
    def from_json(cls, component: str, data: Mapping[str, Any]) -> OrtEngineEntry:
        return cls(component=component, **{**known_fields(cls, data), "data_files": tuple(data.get("data_files", ()))})


@dataclass(frozen=True)
class OrtEngineSet:
    """``engines/ort-<target>-<precision>/``: graphs for ONNX Runtime on this CPU family or on the CUDA provider."""

    name: str
    library_version: str
    target: str
    """``cpu-<machine>-<vector extension>`` (graph optimised for that CPU family) or ``cuda``."""
    precision: str
    components: Mapping[str, OrtEngineEntry]
    backend: str = "ort"

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "library": "onnxruntime", "library_version": self.library_version,
                "target": self.target, "precision": self.precision,
                "components": {name: entry.to_json() for name, entry in self.components.items()}}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> OrtEngineSet:
        return cls(name=name, library_version=data["library_version"], target=data["target"],
                   precision=data["precision"],
                   components={c: OrtEngineEntry.from_json(c, e) for c, e in data["components"].items()})


@dataclass(frozen=True)
class TrtEngineEntry:
    """A serialized TensorRT / TensorRT-RTX plan and the optimisation profile it was built with."""

    component: str
    plan: str
    profile: ShapeProfile
    key: str
    build_seconds: float
    source_onnx_sha256: str
    source_dtype: str
    layer_report: str | None = None
    """Path of the per-layer precision report taken from the builder's own log."""
    compute_layers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Convolutions and matrix products by data type, e.g. ``{"convolution": {"Half": 82}, "matmul": {"Half": 50}}``."""

    @property
    def files(self) -> tuple[str, ...]:
        return (self.plan,)

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "profile": self.profile.to_json(), "key": self.key,
                "build_seconds": self.build_seconds, "source_onnx_sha256": self.source_onnx_sha256,
                "source_dtype": self.source_dtype, "layer_report": self.layer_report,
                "compute_layers": {kind: dict(counts) for kind, counts in self.compute_layers.items()}}

    @classmethod
    def from_json(cls, component: str, data: Mapping[str, Any]) -> TrtEngineEntry:
        known = known_fields(cls, data)
        known["profile"] = ShapeProfile.from_json(component, data["profile"])
        return cls(component=component, **known)


@dataclass(frozen=True)
class TrtEngineSet:
    """``engines/<trt|trt-rtx>-<archs>-<precision>/``: plans for the listed compute capabilities."""

    name: str
    backend: str
    """``trt`` (full TensorRT) or ``trt-rtx`` (TensorRT-RTX)."""
    library: str
    library_version: str
    archs: tuple[str, ...]
    precision: str
    request: ShapeRequest
    components: Mapping[str, TrtEngineEntry]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "library": self.library, "library_version": self.library_version,
                "archs": list(self.archs), "precision": self.precision, "request": self.request.to_json(),
                "components": {name: entry.to_json() for name, entry in self.components.items()}}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> TrtEngineSet:
        return cls(name=name, backend=data["backend"], library=data["library"],
                   library_version=data["library_version"], archs=tuple(data["archs"]), precision=data["precision"],
                   request=ShapeRequest.from_json(data["request"]),
                   components={c: TrtEngineEntry.from_json(c, e) for c, e in data["components"].items()})


@dataclass(frozen=True)
class ForeignEngineSet:
    """An engine set of a backend this diffship does not know: kept verbatim, never opened."""

    name: str
    backend: str
    precision: str
    data: Mapping[str, Any]

    @property
    def components(self) -> Mapping[str, EngineEntry]:
        return {}

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


ENGINE_SET_RECORDS: dict[str, Callable[[str, Mapping[str, Any]], EngineSet]] = {
    "ort": OrtEngineSet.from_json,
    "trt": TrtEngineSet.from_json,
    "trt-rtx": TrtEngineSet.from_json,
}
"""How each backend's engine sets are read from the manifest; a new backend registers its record type here."""


def parse_engine_set(name: str, data: Mapping[str, Any]) -> EngineSet:
    parser = ENGINE_SET_RECORDS.get(str(data.get("backend")))
    if parser is None:
        return ForeignEngineSet(name, str(data.get("backend")), str(data.get("precision")), data)
    return parser(name, data)


# ---------------------------------------------------------------------------------------------- the manifest


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
            "schema_version": SCHEMA_VERSION,
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
        if version not in READABLE_SCHEMAS:
            raise PackageError(
                f"manifest schema version {version!r} is not supported by this diffship (it reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}); update diffship, or re-export the package with this one"
            )
        engines = data.get("engines", {})
        if version == 1:
            engines = {name: _engine_set_from_v1(e, data["files"]) for name, e in engines.items()}
        return cls(
            schema_version=SCHEMA_VERSION,
            family=data["family"],
            source=data["source"],
            constants=PipelineConstants.from_json(data["constants"]),
            export=data["export"],
            components={
                name: {dtype: ComponentVariant.from_json(name, dtype, v) for dtype, v in variants.items()}
                for name, variants in data["components"].items()
            },
            files={path: FileEntry(**known_fields(FileEntry, entry)) for path, entry in data["files"].items()},
            engines={name: parse_engine_set(name, e) for name, e in engines.items()},
        )

    def with_files(self, root: Path, paths: Iterable[str]) -> Manifest:
        """A copy with ``paths`` (relative to ``root``) hashed and recorded."""
        files = dict(self.files)
        for relative in paths:
            files[relative] = FileEntry.of(root / relative)
        return replace(self, files=files)

    def with_engine_set(self, engine_set: EngineSet, root: Path, new_files: Iterable[str]) -> Manifest:
        """A copy with ``engine_set`` recorded (replacing one of the same name) and ``new_files`` hashed."""
        return replace(self.with_files(root, new_files), engines={**self.engines, engine_set.name: engine_set})


def _engine_set_from_v1(data: Mapping[str, Any], listed: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 stored every backend's engines in TensorRT's fields; version 2 types them per backend."""
    components: dict[str, Any] = {}
    for component, entry in data.get("components", {}).items():
        common = {"key": entry["key"], "build_seconds": entry["build_seconds"],
                  "source_onnx_sha256": entry["onnx_sha256"], "source_dtype": entry.get("onnx_dtype", "fp32")}
        if data.get("backend") == "ort":
            layers = entry.get("layer_precisions", {})
            data_file = entry["plan"] + ".data"
            components[component] = {**common, "graph": entry["plan"], "data_files": [data_file] if data_file in listed else [],
                                     "fused_attention": int(layers.get("fused_attention", 0)),
                                     "report": entry.get("precision_summary")}
        else:
            components[component] = {**common, "plan": entry["plan"], "profile": entry["profile"],
                                     "layer_report": entry.get("precision_summary"),
                                     "compute_layers": entry.get("layer_precisions", {})}
    converted = {**data, "components": components}
    if data.get("backend") == "ort":
        converted["target"] = (data.get("archs") or ["cpu"])[0]
    return converted
