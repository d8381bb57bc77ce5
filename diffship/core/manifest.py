"""``manifest.json``: the one schema every layer reads and writes (docs/design.md, "The model package").

Schema version 2 typed engine sets per backend: ``OrtEngineSet`` (ONNX Runtime graphs from ``build-ort``) and
``TrtEngineSet`` (TensorRT / TensorRT-RTX plans from ``build-trt``). Version 3 nests the constants: one record per text
encoder (with its vocabulary size) and the family's own part (``PipelineConstants.family``) in place of SDXL's optional
top-level fields. Older manifests are read and upgraded in memory (the next write stores version 3). Keys a newer
writer adds within a version are ignored on reading, and engine sets of a backend this diffship does not know are kept
as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from diffship.core.errors import PackageError
from diffship.core.families import FAMILIES
from diffship.core.integrity import sha256_file
from diffship.core.reading import obj, relative_path, typed_fields
from diffship.core.specs import ComponentSpec, FamilyConstants, PipelineConstants, ShapeProfile, ShapeRequest

SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
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

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> FileEntry:
        entry = cls(**typed_fields(cls, data, where))
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256) or entry.bytes < 0:
            raise PackageError(f"{where} needs a 64-digit lower-case hex sha256 and a size >= 0, got {dict(data)}")
        return entry


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
    weight_map: str | None = None
    """Path of the graph's weight map (``core.weights``): where the weights a LoRA can change are. None: the
    component takes no LoRA, or the package was exported before LoRA support."""

    def to_json(self) -> dict[str, Any]:
        extra = {"weight_map": self.weight_map} if self.weight_map is not None else {}
        return {"onnx": self.onnx, "files": list(self.files), **self.spec.to_json(), "verification": self.verification,
                **extra}

    @classmethod
    def from_json(cls, component: str, dtype: str, data: Mapping[str, Any], where: str) -> ComponentVariant:
        found = typed_fields(cls, data, where, skip=("component", "dtype", "spec"))
        return cls(
            component=component,
            dtype=dtype,
            onnx=relative_path(found["onnx"], f"{where}.onnx"),
            files=tuple(relative_path(f, f"{where}.files") for f in found["files"]),
            spec=ComponentSpec.from_json(component, data, where),
            verification=found.get("verification", {}),
            weight_map=None if found.get("weight_map") is None else relative_path(found["weight_map"],
                                                                                  f"{where}.weight_map"),
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

    @property
    def weight_map(self) -> str | None:
        """Path of the weight map of the weights a LoRA can change in this engine; None: it takes no LoRA."""
        ...


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
    key: str
    build_seconds: float
    source_onnx_sha256: str
    source_dtype: str
    fused_attention: int
    data_files: tuple[str, ...] = ()
    """The graph's external-data files, if any."""
    report: str | None = None
    """Path of the build report (fusion count, verification against the exported graph)."""
    weight_map: str | None = None
    """Path of the built graph's weight map (``core.weights``); None: built before LoRA support."""

    @property
    def files(self) -> tuple[str, ...]:
        return (self.graph, *self.data_files, *([self.weight_map] if self.weight_map else []))

    def to_json(self) -> dict[str, Any]:
        return {"graph": self.graph, "data_files": list(self.data_files), "key": self.key,
                "build_seconds": self.build_seconds, "source_onnx_sha256": self.source_onnx_sha256,
                "source_dtype": self.source_dtype, "fused_attention": self.fused_attention, "report": self.report,
                "weight_map": self.weight_map}

    @classmethod
    def from_json(cls, component: str, data: Mapping[str, Any], where: str) -> OrtEngineEntry:
        found = typed_fields(cls, data, where, skip=("component",))
        found["graph"] = relative_path(found["graph"], f"{where}.graph")
        found["data_files"] = tuple(relative_path(f, f"{where}.data_files") for f in found.get("data_files", ()))
        if found.get("weight_map") is not None:
            found["weight_map"] = relative_path(found["weight_map"], f"{where}.weight_map")
        return cls(component=component, **found)


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
    def from_json(cls, name: str, data: Mapping[str, Any], where: str) -> OrtEngineSet:
        found = typed_fields(cls, data, where, skip=("name", "backend", "components"))
        components = obj(obj(data, where).get("components"), f"{where}.components")
        return cls(name=name, **found, components={
            c: OrtEngineEntry.from_json(c, e, f"{where}.components.{c}") for c, e in components.items()})


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
    refittable: bool = False
    """Built with ``--refittable``: the weights its weight map lists can be refitted (LoRA without a rebuild)."""
    weight_map: str | None = None
    """Path of the weight map of the refittable weights (names as the plan knows them, base values in the package)."""

    @property
    def files(self) -> tuple[str, ...]:
        return (self.plan, *([self.weight_map] if self.weight_map else []))

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan, "profile": self.profile.to_json(), "key": self.key,
                "build_seconds": self.build_seconds, "source_onnx_sha256": self.source_onnx_sha256,
                "source_dtype": self.source_dtype, "layer_report": self.layer_report,
                "compute_layers": {kind: dict(counts) for kind, counts in self.compute_layers.items()},
                "refittable": self.refittable, "weight_map": self.weight_map}

    @classmethod
    def from_json(cls, component: str, data: Mapping[str, Any], where: str) -> TrtEngineEntry:
        found = typed_fields(cls, data, where, skip=("component", "profile"))
        found["plan"] = relative_path(found["plan"], f"{where}.plan")
        if found.get("layer_report") is not None:
            found["layer_report"] = relative_path(found["layer_report"], f"{where}.layer_report")
        if found.get("weight_map") is not None:
            found["weight_map"] = relative_path(found["weight_map"], f"{where}.weight_map")
        profile = ShapeProfile.from_json(component, obj(data, where).get("profile"), f"{where}.profile")
        return cls(component=component, profile=profile, **found)


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
    def from_json(cls, name: str, data: Mapping[str, Any], where: str) -> TrtEngineSet:
        found = typed_fields(cls, data, where, skip=("name", "request", "components"))
        components = obj(obj(data, where).get("components"), f"{where}.components")
        return cls(name=name, **found, request=ShapeRequest.from_json(data["request"], f"{where}.request"),
                   components={c: TrtEngineEntry.from_json(c, e, f"{where}.components.{c}")
                               for c, e in components.items()})


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


ENGINE_SET_RECORDS: dict[str, Callable[[str, Mapping[str, Any], str], EngineSet]] = {
    "ort": OrtEngineSet.from_json,
    "trt": TrtEngineSet.from_json,
    "trt-rtx": TrtEngineSet.from_json,
}
"""How each backend's engine sets are read from the manifest; a new backend registers its record type here."""


def parse_engine_set(name: str, data: Mapping[str, Any], where: str = "engines") -> EngineSet:
    data = obj(data, f"{where}.{name}")
    parser = ENGINE_SET_RECORDS.get(str(data.get("backend")))
    if parser is None:
        return ForeignEngineSet(name, str(data.get("backend")), str(data.get("precision")), data)
    return parser(name, data, f"{where}.{name}")


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
        data = obj(data, "the manifest")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_SCHEMAS:
            raise PackageError(
                f"manifest schema version {version!r} is not supported by this diffship (it reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}); update diffship, or re-export the package with this one"
            )
        found = typed_fields(cls, data, "manifest", skip=("constants", "components", "files", "engines", "schema_version"))
        files = obj(data.get("files"), "files")
        engines = obj(data.get("engines", {}), "engines")
        if version == 1:
            engines = {name: _engine_set_from_v1(obj(e, f"engines.{name}"), files) for name, e in engines.items()}
        components = {}
        for name, variants in obj(data.get("components"), "components").items():
            components[name] = {dtype: ComponentVariant.from_json(name, dtype, v, f"components.{name}.{dtype}")
                                for dtype, v in obj(variants, f"components.{name}").items()}
        constants = obj(data.get("constants"), "constants")
        if version < 3:
            constants = _constants_from_v2(constants)
        family = FAMILIES.get(found["family"])  # an unknown family is refused by name when the package is used
        read = PipelineConstants.from_json(constants, "constants",
                                           family.constants_type if family is not None else FamilyConstants)
        problem = family.check_constants(read) if family is not None else None
        if problem is not None:
            raise PackageError(f"constants: {problem}")
        return cls(
            **found,
            schema_version=SCHEMA_VERSION,
            constants=read,
            components=components,
            files={relative_path(path, "files"): FileEntry.from_json(entry, f"files[{path!r}]")
                   for path, entry in files.items()},
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


FLAT_FAMILY_FIELDS = ("pooled_size", "time_ids", "force_zeros_for_empty_prompt")
"""SDXL's fields at the top level of version 1 and 2 constants; version 3 nests them (``PipelineConstants.family``)."""


def _constants_from_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 and 2 constants held one text encoder's width and pad token at the top level, SDXL's second encoder
    and added conditioning as optional fields beside them, and a width of 0 for the refiner's absent first encoder;
    version 3 lists the encoders and nests the family's own part. The vocabulary size was not recorded."""
    flat = dict(data)
    hidden, pad = flat.pop("text_hidden_size", None), flat.pop("pad_token", None)
    hidden_2, pad_2 = flat.pop("text_hidden_size_2", None), flat.pop("pad_token_2", None)
    encoders = []
    if not (type(hidden) is int and hidden == 0):  # 0: the SDXL refiner, whose UNet reads the second encoder alone
        encoders.append({"component": "text_encoder", "tokenizer": "tokenizer", "hidden_size": hidden,
                         "pad_token": pad})
    if hidden_2 is not None:
        encoders.append({"component": "text_encoder_2", "tokenizer": "tokenizer_2", "hidden_size": hidden_2,
                         "pad_token": pad if pad_2 is None else pad_2})
    family = {name: flat.pop(name) for name in FLAT_FAMILY_FIELDS if name in flat}
    return {**flat, "text_encoders": [{k: v for k, v in e.items() if v is not None} for e in encoders],
            "family": family}
