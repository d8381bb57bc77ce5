"""fp32 ONNX -> fp16 ONNX (build time, imports onnx and onnxruntime's converter), checked before use.

Strongly typed builders (TensorRT-RTX, and TensorRT from 11.0 on, which removed the FP16 builder flag) take their
precision from the ONNX, so a package exported in fp32 only gets its fp16 graphs here: ONNX Runtime's float16 converter
(timestep kept float32; shape arithmetic and Resize kept float32), repeats removed and re-sorted, then checked against
the fp32 graph in ONNX Runtime at the fp16 bar (docs/design.md, "Parity bars") and added to the package with its
weight map. Exporting with ``--dtype fp16`` is the sturdier route; this is the fallback every builder shares
(docs/design.md, "TensorRT and TensorRT-RTX builds").
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from diffship.core.files import publish_files, work_folder
from diffship.core.manifest import ComponentVariant, Manifest
from diffship.core.metrics import verification_dims, verify_outputs
from diffship.core.package import ModelPackage
from diffship.core.weights import WeightMap
from diffship.engines.errors import EngineError
from diffship.engines.onnx.feeds import vocab_size
from diffship.engines.onnx.graphs import save_onnx
from diffship.engines.onnx.session import open_session, run_session

log = logging.getLogger(__name__)


FP32_KEPT_OPS = ["Resize", "Range", "ConstantOfShape"]
"""Ops kept in float32 by the converter: shape arithmetic, and Resize, whose scales must stay float32."""


def convert_to_fp16(package: ModelPackage, component: str) -> ComponentVariant:
    """fp32 ONNX -> fp16 ONNX (timestep stays float32), verified against fp32 in ONNX Runtime, added to the package."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    source = package.variant(component, "fp32")
    for relative in source.files:
        package.verify_file(relative)
    model = onnx.load(str(package.path(source.onnx)))
    keep = [t.name for t in source.spec.inputs if t.name == "timestep"]
    blocked_ops = DEFAULT_OP_BLOCK_LIST + FP32_KEPT_OPS
    converted = convert_float_to_float16(
        model, keep_io_types=keep or False, disable_shape_infer=True, op_block_list=blocked_ops,
        node_block_list=_constants_only_for(model, set(blocked_ops)),
    )
    converted = _deduplicate_and_sort(converted)
    relative = source.onnx.replace("model.onnx", "model_fp16.onnx")
    folder = package.path(relative).parent
    with work_folder(folder, "fp16") as scratch:
        # Weights in external data, as the exporter writes them: where a weight map can point LoRA merges at them.
        staged = save_onnx(converted, scratch / "model_fp16.onnx", external=True)
        fp32, fp16 = open_session(package.path(source.onnx)), open_session(staged[0])
        verification = verify_outputs(source.spec, "fp16", verification_dims(package.constants),
                                      lambda feeds: run_session(fp32, feeds), lambda feeds: run_session(fp16, feeds),
                                      vocab_size(package, component), seed=0)
        if not verification.passed:
            raise EngineError(
                f"{component}: the fp32 -> fp16 conversion misses the fp16 bar ({'; '.join(verification.failures)}); "
                "re-export the package with --dtype fp32,fp16 (half-precision export is the sturdier route)"
            )
        weight_map = _converted_weight_map(package, source, staged[0], relative)
        if weight_map is not None:
            (scratch / "model_fp16.weights.json").write_text(json.dumps(weight_map.to_json(), indent=1) + "\n",
                                                             encoding="utf-8")
        # External data before the graph that names it.
        published = publish_files(scratch, [p.name for p in reversed(staged)], folder)
        written = [str(p.relative_to(package.root)) for p in reversed(published)]
        map_relative = None
        if weight_map is not None:
            (map_path,) = publish_files(scratch, ["model_fp16.weights.json"], folder)
            map_relative = str(map_path.relative_to(package.root))
    variant = ComponentVariant(
        component=component,
        dtype="fp16",
        onnx=written[0],
        files=tuple(written),
        spec=source.spec.with_float_dtype("float16"),
        verification={**verification.to_json(), "converted_from": "fp32",
                      "method": "onnxruntime.transformers.float16 (timestep kept float32), checked against fp32 ONNX "
                                "in ONNX Runtime"},
        weight_map=map_relative,
    )
    listed = [*written, map_relative] if map_relative is not None else written

    def record(manifest: Manifest) -> Manifest:
        components = {**manifest.components, component: {**manifest.components[component], "fp16": variant}}
        return replace(manifest.with_files(package.root, listed), components=components)

    package.update_manifest(record)
    return variant


def _constants_only_for(model: Any, ops: set[str]) -> list[str]:
    """Constant nodes read only by ``ops`` (kept float32): the converter would otherwise halve a Resize's scales
    written as a Constant node (the legacy exporter's way), and ONNX Runtime then rejects the graph."""
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    return [node.name for node in model.graph.node if node.op_type == "Constant" and node.name
            and all(readers.get(output) and set(readers[output]) <= ops for output in node.output)]


def _converted_weight_map(
    package: ModelPackage, source: ComponentVariant, graph: Path, graph_relative: str
) -> WeightMap | None:
    """The converted graph's weight map: the fp32 graph's mapped weights, converted as the converter converts them
    (tiny values clamped, not flushed), found again by their bytes. None when the fp32 graph has no map."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    from diffship.engines.onnx.weight_maps import map_weights, torch_layout_weights

    if source.weight_map is None:
        return None
    fp32_map = WeightMap.read(package.verify_file(source.weight_map), source.weight_map)
    weights = {module: convert_np_to_float16(weight)
               for module, weight in torch_layout_weights(package.root, fp32_map).items()}
    weight_map = map_weights(graph, graph_relative, source.component, weights)
    log.debug("%s fp16 (converted): %d weights mapped for LoRA", source.component, len(weight_map.slots))
    return WeightMap(weight_map.component, weight_map.graph, weight_map.slots,
                     {**fp32_map.unmapped, **weight_map.unmapped})


def _deduplicate_and_sort(model: Any) -> Any:
    """ONNX Runtime's float16 converter can emit the same Cast twice and out of order; drop repeats and re-sort."""
    import onnx_graphsurgeon as gs

    seen: set[tuple[Any, ...]] = set()
    nodes = []
    for node in model.graph.node:
        signature = (node.op_type, tuple(node.input), tuple(node.output),
                     tuple(a.SerializeToString() for a in node.attribute))
        if signature not in seen:
            seen.add(signature)
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)
