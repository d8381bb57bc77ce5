"""ONNX files at build time (imports onnx): saving under protobuf's 2 GB limit, and sanitising before a parser.

The exporter and every engine builder save graphs through ``save_onnx``, so weights of a model over 2 GB always land
in one external-data file beside it, named ``<file>.data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffship.core.errors import require

PROTOBUF_LIMIT = 2**31 - 1


def save_onnx(model: Any, path: Path, external: bool | None = None) -> list[Path]:
    """Save ``model`` at ``path``; its weights go to ``<name>.data`` when ``external`` (None: only when they approach
    the 2 GB protobuf limit). Returns the files written, the graph first."""
    onnx = require("onnx", "saving an ONNX graph")
    data = path.with_name(path.name + ".data")
    for stale in (path, data):
        stale.unlink(missing_ok=True)
    if external is None:
        external = sum(len(t.raw_data) for t in model.graph.initializer) + (1 << 20) >= PROTOBUF_LIMIT
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data] if data.is_file() else [path]
    onnx.save_model(model, str(path))
    return [path]


def sanitize_onnx(source: Path, dest: Path) -> Path:
    """Constant folding, dead-node removal and a topological sort (onnx-graphsurgeon) before a parser reads it."""
    onnx = require("onnx", "preparing a graph for TensorRT")
    gs = require("onnx_graphsurgeon", "preparing a graph for TensorRT")
    graph = gs.import_onnx(onnx.load(str(source)))
    graph.fold_constants().cleanup().toposort()
    save_onnx(gs.export_onnx(graph), dest)
    return dest
