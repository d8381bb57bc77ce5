"""The per-layer precision report of a TensorRT / TensorRT-RTX build (build time; no TensorRT import): proof of
precision without a GPU (docs/design.md, "TensorRT and TensorRT-RTX builds").

Builds run with detailed profiling verbosity; the builder's own account of every layer is parsed from its log into
``Layer`` records, summarised (``LayerSummary``: how many convolutions and matrix products run in which type) and
written beside the plan as ``<component>.layers.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffship.core.manifest import EngineEntry, TrtEngineEntry
from diffship.core.package import ModelPackage
from diffship.core.reading import obj

COMPUTE_LAYER_KINDS = {
    # Myelin (the compiler behind TensorRT-RTX and TensorRT 10's fused regions) and classic TensorRT layer names.
    "correlation": "convolution",
    "convolution": "convolution",
    "cask_convolution": "convolution",
    "caskconvolution": "convolution",
    "gemm": "matmul",
    "matrixmultiply": "matmul",
    "cask_gemm": "matmul",
    "caskgemm": "matmul",
}
_MYELIN_LAYER = re.compile(
    r"Name: (?P<name>.*?), LayerType: (?P<kind>\w+), Inputs: \[(?P<inputs>.*?)\], Constants: \[(?P<constants>.*?)\], "
    r"Outputs: \[(?P<outputs>.*?)\], TacticName",
    re.S,
)
_CLASSIC_LAYER = re.compile(r"^Layer\((?P<kind>\w+)\): (?P<name>.+?), Tactic: [^,]*, (?P<inputs>.*?) -> (?P<outputs>.*)$")
_DTYPE_FIELD = re.compile(r"Datatype: (\w+)")
_DTYPE_WORD = re.compile(r"\b(Half|Float|BFloat16|Int8|Int32|Int64|UInt8|Bool|FP8|FP4|Int4)\(")

Counts = Mapping[str, Mapping[str, int]]
"""Layers by kind, then by data type: ``{"convolution": {"Half": 82}, "matmul": {"Half": 50}}``."""


@dataclass(frozen=True)
class Layer:
    """One layer of a built engine as the builder reported it, with the data types of its tensors."""

    name: str
    type: str
    inputs: tuple[str, ...]
    constants: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "inputs": list(self.inputs), "constants": list(self.constants),
                "outputs": list(self.outputs)}


@dataclass(frozen=True)
class LayerSummary:
    """Counts of a built engine's layers: by layer type and data type, and ``compute_layers``, its convolutions and
    matrix products by input type (what the manifest records)."""

    layers: int
    by_type: Counts = field(default_factory=dict)
    compute_layers: Counts = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"layers": self.layers, "by_type": {k: dict(v) for k, v in self.by_type.items()},
                "compute_layers": {k: dict(v) for k, v in self.compute_layers.items()}}

    @classmethod
    def from_json(cls, data: Any, where: str) -> LayerSummary:
        found = obj(data, where)
        layers = found.get("layers", 0)
        counts = {key: _counts(found.get(key, {}), f"{where}.{key}") for key in ("by_type", "compute_layers")}
        return cls(layers if isinstance(layers, int) else 0, counts["by_type"], counts["compute_layers"])


def _counts(data: Any, where: str) -> dict[str, dict[str, int]]:
    return {kind: {dtype: int(n) for dtype, n in obj(per_dtype, f"{where}.{kind}").items()}
            for kind, per_dtype in obj(data, where).items()}


def parse_layer_report(messages: Sequence[str]) -> list[Layer]:
    """Layers of the built engine with their data types, from the builder's DETAILED log.

    Two formats: Myelin's ``Layers:`` listing (``Name: ..., LayerType: gemm, Inputs: [{... Datatype: Half ...}]``)
    and classic TensorRT's ``Layer(CaskConvolution): name, Tactic: ..., in (Half[...]) -> out (Half[...])``.
    """
    layers = []
    for message in messages:
        if message.startswith("Layers:") or "LayerType:" in message:
            for match in _MYELIN_LAYER.finditer(message):
                layers.append(Layer(match["name"].strip(), match["kind"], tuple(_DTYPE_FIELD.findall(match["inputs"])),
                                    tuple(_DTYPE_FIELD.findall(match["constants"])),
                                    tuple(_DTYPE_FIELD.findall(match["outputs"]))))
        for line in message.splitlines():
            classic = _CLASSIC_LAYER.match(line.strip())
            if classic:
                layers.append(Layer(classic["name"], classic["kind"], tuple(_DTYPE_WORD.findall(classic["inputs"])), (),
                                    tuple(_DTYPE_WORD.findall(classic["outputs"]))))
    return layers


def summarize_layers(layers: Sequence[Layer]) -> LayerSummary:
    """Counts by layer type and data type; ``compute_layers`` counts convolutions and matrix products by input type."""
    by_type: dict[str, dict[str, int]] = {}
    compute: dict[str, dict[str, int]] = {"convolution": {}, "matmul": {}}
    for layer in layers:
        dtype = (layer.inputs or layer.outputs or ("none",))[0]
        by_type.setdefault(layer.type, {}).setdefault(dtype, 0)
        by_type[layer.type][dtype] += 1
        kind = COMPUTE_LAYER_KINDS.get(layer.type.lower())
        if kind:
            compute[kind][dtype] = compute[kind].get(dtype, 0) + 1
    return LayerSummary(len(layers), by_type, compute)


def describe_summary(summary: LayerSummary) -> str:
    parts = []
    for kind, counts in summary.compute_layers.items():
        if counts:
            parts.append(f"{kind}s " + ", ".join(f"{n} {dtype}" for dtype, n in sorted(counts.items())))
    return "; ".join(parts) or "no convolution or matrix layers reported"


def read_layer_summary(package: ModelPackage, entry: EngineEntry) -> LayerSummary | None:
    """The precision summary of a built TensorRT engine, from its layer report (None for any other entry, or when
    the report is missing)."""
    if isinstance(entry, TrtEngineEntry) and entry.layer_report and package.path(entry.layer_report).is_file():
        report = obj(json.loads(package.path(entry.layer_report).read_text(encoding="utf-8")), entry.layer_report)
        return LayerSummary.from_json(report.get("summary"), f"{entry.layer_report}: summary")
    return None
