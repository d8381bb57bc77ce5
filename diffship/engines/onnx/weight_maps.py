"""Writing weight maps (build time, imports onnx): find each LoRA-changeable weight in a saved graph by its bytes.

Names do not survive export and optimisation reliably (torch.onnx folds ``W.T`` into ``val_123``; ONNX Runtime's CPU
optimiser reorders convolution filters into ``reorder_token_45``), values do: each weight is looked for in every
layout the graph may store it in (``core.weights``), and found only where exactly one initializer holds exactly those
bytes. What is not found that way is listed as unmapped with the reason, and a LoRA that touches it is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from diffship.core.errors import require
from diffship.core.weights import WeightMap, WeightSlot, to_layout

log = logging.getLogger(__name__)

EXPORT_LAYOUTS = (("torch", 0), ("transposed", 0))
NCHWC_LAYOUTS = (("nchwc_oihwbibo", 8), ("nchwc_oihwbo", 8), ("nchwc_oihwbibo", 16), ("nchwc_oihwbo", 16))
_DTYPES = {1: "float32", 10: "float16"}


def _digest(array: np.ndarray) -> tuple[str, str]:
    # Bytes and dtype, not shape: ONNX Runtime keeps a reordered filter's 4-D shape over its blocked bytes.
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(), str(array.dtype)


def map_weights(
    graph_path: Path,
    graph_relative: str,
    component: str,
    weights: Mapping[str, np.ndarray],
    layouts: Sequence[tuple[str, int]] = EXPORT_LAYOUTS,
) -> WeightMap:
    """The weight map of the saved graph at ``graph_path`` (``graph_relative`` in the package) for ``weights``:
    module path -> weight in torch's layout and in the graph's dtype."""
    onnx = require("onnx", "mapping LoRA weights")
    from onnx import numpy_helper

    model = onnx.load(str(graph_path), load_external_data=False)
    folder = PurePosixPath(graph_relative).parent
    by_digest: dict[tuple[str, str], list[tuple[str, tuple[int, ...], str, int, int]]] = {}
    for tensor in model.graph.initializer:
        dtype = _DTYPES.get(tensor.data_type)
        if dtype is None or len(tensor.dims) < 2:
            continue
        shape = tuple(int(d) for d in tensor.dims)
        external = {entry.key: entry.value for entry in tensor.external_data}
        if "location" in external:
            offset, length = int(external.get("offset", 0)), int(external["length"])
            array = np.fromfile(graph_path.parent / external["location"], dtype=dtype,
                                count=length // np.dtype(dtype).itemsize, offset=offset).reshape(shape)
            place = (str(folder / external["location"]), offset, length)
        else:
            array, place = numpy_helper.to_array(tensor), ("", 0, 0)
        by_digest.setdefault(_digest(array), []).append((tensor.name, shape, *place))

    found: dict[str, WeightSlot] = {}
    unmapped: dict[str, str] = {}
    for module, weight in weights.items():
        matches = []
        for layout, block in layouts:
            if layout == "transposed" and weight.ndim != 2 or layout.startswith("nchwc") and weight.ndim != 4:
                continue
            for name, dims, file, offset, length in by_digest.get(_digest(to_layout(weight, layout, block)), []):
                matches.append((name, dims, layout, block, file, offset, length))
        if not matches:
            unmapped[module] = "the graph holds no separate copy of this weight (folded or fused into another)"
            continue
        if len({m[0] for m in matches}) == 1:
            matches = matches[:1]  # one weight, two layouts that coincide (1x1 filters: OIHWBiBo is OIHWBo)
        if len(matches) > 1:
            named = [m for m in matches if m[0].endswith(f"{module}.weight")]
            if len(named) != 1:
                unmapped[module] = f"{len(matches)} weights of the graph hold these values; which one is ambiguous"
                continue
            matches = named
        name, dims, layout, block, file, offset, length = matches[0]
        if not file:
            unmapped[module] = f"{name} is stored inside the graph, not in its external-data file"
            continue
        slot = WeightSlot(name, tuple(weight.shape), dims, str(weight.dtype), layout, block, file, offset, length)
        found[module] = slot
    claimed: dict[str, list[str]] = {}
    for module, slot in found.items():
        claimed.setdefault(slot.initializer, []).append(module)
    slots = {}
    for module, slot in found.items():
        sharing = claimed[slot.initializer]
        if len(sharing) > 1:
            unmapped[module] = f"{slot.initializer} holds the weights of {', '.join(sorted(sharing))} (deduplicated)"
        else:
            slots[module] = slot
    log.debug("%s: %d weights mapped, %d unmapped", component, len(slots), len(unmapped))
    return WeightMap(component, graph_relative, slots, unmapped)


def torch_layout_weights(root: Path, weight_map: WeightMap) -> dict[str, np.ndarray]:
    """Every mapped weight of an exported graph's map, back in torch's layout (to find them again in a built graph)."""
    from diffship.core.weights import from_layout, read_stored

    return {module: np.array(from_layout(read_stored(root, slot), slot)) for module, slot in weight_map.slots.items()}
