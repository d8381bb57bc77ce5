"""Weight maps: where each weight a LoRA can change lives in one graph (docs/design.md, "LoRA").

The exporter writes one for every exported ONNX graph that has such weights, ``build-ort`` one for every graph it
builds; both are JSON files listed in the manifest. The runtime reads them to merge LoRA deltas without torch or onnx:
the base weight is read from the graph's external-data file at the recorded offset (memory-mapped), the delta is put
into the stored layout, and the merged array is handed to the engine.

A slot is keyed by the module's path inside its diffusers model (``down_blocks.0.attentions.0.transformer_blocks.0.
attn1.to_q`` in the UNet, ``text_model.encoder.layers.0.self_attn.q_proj`` in the CLIP text encoder), the name LoRA
files use. Its ``shape`` is torch's (``[out, in]`` or ``[out, in, kh, kw]``); ``layout`` says how the graph stores it:

- ``torch``: as torch holds it (Gemm, Conv);
- ``transposed``: ``[in, out]`` (torch.onnx writes ``x @ W.T`` as MatMul over a folded transposed copy);
- ``nchwc``: ONNX Runtime's blocked convolution filter for its NCHWc kernels (the ``build-ort`` CPU graphs), channels
  padded with zeros to a multiple of ``block``; ``OIHWBiBo`` (``[O/b, I/b, kh, kw, b_in, b_out]``) or, when the input
  channels are fewer than a block, ``OIHWBo`` (``[O/b, I, kh, kw, b_out]``), under a 4-D declared shape (``dims``).

Each layout is linear, so ``stored(base) + stored(delta)`` is the stored form of ``base + delta``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.errors import PackageError
from diffship.core.reading import obj, relative_path, typed_fields

LAYOUTS = ("torch", "transposed", "nchwc_oihwbibo", "nchwc_oihwbo")
WEIGHT_MAP_SCHEMA = 1


@dataclass(frozen=True)
class WeightSlot:
    """One weight a LoRA can change, and where its bytes are."""

    initializer: str
    """The graph's name for it (an ONNX initializer; TensorRT's refit name)."""
    shape: tuple[int, ...]
    """torch's shape: ``[out, in]`` or ``[out, in, kh, kw]``."""
    dims: tuple[int, ...]
    """The graph's declared shape (the blocked layouts keep a 4-D shape over their reordered bytes)."""
    dtype: str
    """``float32`` or ``float16``, as stored."""
    layout: str = "torch"
    block: int = 0
    """Channel block of the ``nchwc`` layouts."""
    file: str = ""
    """External-data file holding it, relative to the package root."""
    offset: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown weight layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"weight dtype must be float32 or float16, got {self.dtype!r}")
        if len(self.shape) not in (2, 4) or self.layout.startswith("nchwc") and (len(self.shape) != 4 or self.block < 1):
            raise ValueError(f"layout {self.layout} cannot hold a weight of shape {list(self.shape)}")

    def stored(self, weight: np.ndarray) -> np.ndarray:
        """``weight`` (torch's layout) as this slot stores it, in the graph's declared shape."""
        return to_layout(weight, self.layout, self.block).reshape(self.dims)

    def to_json(self) -> dict[str, Any]:
        return {"initializer": self.initializer, "shape": list(self.shape), "dims": list(self.dims), "dtype": self.dtype, "layout": self.layout,
                "block": self.block, "file": self.file, "offset": self.offset, "length": self.length}


@dataclass(frozen=True)
class WeightMap:
    """The LoRA-changeable weights of one graph, by diffusers module path."""

    component: str
    graph: str
    slots: Mapping[str, WeightSlot]
    unmapped: Mapping[str, str] = field(default_factory=dict)
    """Modules of the source model the graph has no separate weight for, and why (their LoRA keys are refused)."""

    def to_json(self) -> dict[str, Any]:
        return {"schema": WEIGHT_MAP_SCHEMA, "component": self.component, "graph": self.graph,
                "slots": {module: slot.to_json() for module, slot in sorted(self.slots.items())},
                "unmapped": dict(sorted(self.unmapped.items()))}

    @classmethod
    def from_json(cls, data: Any, where: str) -> WeightMap:
        data = obj(data, where)
        if data.get("schema") != WEIGHT_MAP_SCHEMA:
            raise PackageError(f"{where} has weight-map schema {data.get('schema')!r}; this diffship reads "
                               f"{WEIGHT_MAP_SCHEMA} (re-export the package, or build its engines again)")
        slots = {}
        for module, value in obj(data.get("slots", {}), f"{where}.slots").items():
            found = typed_fields(WeightSlot, value, f"{where}.slots.{module}")
            found["file"] = relative_path(found["file"], f"{where}.slots.{module}.file")
            try:
                slots[module] = WeightSlot(**found)
            except ValueError as exc:
                raise PackageError(f"{where}.slots.{module}: {exc}") from None
        unmapped = obj(data.get("unmapped", {}), f"{where}.unmapped")
        return cls(str(data.get("component", "")), str(data.get("graph", "")), slots,
                   {str(k): str(v) for k, v in unmapped.items()})

    @classmethod
    def read(cls, path: Path, where: str) -> WeightMap:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PackageError(f"cannot read the weight map {where}: {exc}") from None
        return cls.from_json(data, where)


def to_layout(weight: np.ndarray, layout: str, block: int = 0) -> np.ndarray:
    """``weight`` (torch's layout) as the graph stores it."""
    if layout == "torch":
        return weight
    if layout == "transposed":
        return np.ascontiguousarray(weight.T)
    out, inputs, height, width = weight.shape
    padded_out = -(-out // block) * block
    if layout == "nchwc_oihwbibo":
        padded_in = -(-inputs // block) * block
        padded = np.zeros((padded_out, padded_in, height, width), weight.dtype)
        padded[:out, :inputs] = weight
        # [ob, bo, ib, bi, h, w] -> [ob, ib, h, w, bi, bo]
        blocked = padded.reshape(padded_out // block, block, padded_in // block, block, height, width)
        return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 3, 1))
    padded = np.zeros((padded_out, inputs, height, width), weight.dtype)
    padded[:out] = weight
    # [ob, bo, i, h, w] -> [ob, i, h, w, bo]
    blocked = padded.reshape(padded_out // block, block, inputs, height, width)
    return np.ascontiguousarray(blocked.transpose(0, 2, 3, 4, 1))


def from_layout(stored: np.ndarray, slot: WeightSlot) -> np.ndarray:
    """The weight in torch's layout, from the ``torch`` or ``transposed`` layouts (the ones an exported graph has)."""
    if slot.layout == "torch":
        return stored.reshape(slot.shape)
    if slot.layout == "transposed":
        return np.ascontiguousarray(stored.reshape(slot.shape[::-1]).T)
    raise ValueError(f"{slot.initializer}: reading back the {slot.layout} layout is not supported")


def read_stored(root: Path, slot: WeightSlot) -> np.ndarray:
    """The slot's bytes as the graph stores them, memory-mapped read-only from its external-data file."""
    path = root / slot.file
    count = int(np.prod(slot.dims))
    if count * np.dtype(slot.dtype).itemsize != slot.length:
        raise PackageError(f"weight {slot.initializer}: {slot.length} bytes recorded for {count} {slot.dtype} values")
    try:
        return np.memmap(path, dtype=slot.dtype, mode="r", offset=slot.offset, shape=slot.dims)
    except (OSError, ValueError) as exc:
        raise PackageError(f"cannot read weight {slot.initializer} from {slot.file}: {exc}") from None
