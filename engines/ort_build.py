"""``build-ort``: ONNX Runtime (CPU) engines: attention fused into MultiHeadAttention, graph optimised once, saved.

What it buys, measured on the full-size SD 1.5 UNet (BENCHMARKS.md): torch.onnx's dynamo exporter writes attention as
MatMul -> Softmax -> MatMul, which ONNX Runtime runs by materialising the [batch x heads, tokens, tokens] score matrix
(2 GB per self-attention at 512 px). ONNX Runtime's own transformer optimizer does not recognise that pattern, so
``fuse_attention`` rewrites it into ``com.microsoft.MultiHeadAttention``, whose CPU kernel works in tiles. The fused
graph is then optimised at ``ORT_ENABLE_ALL`` (including the NCHWc layout for this CPU's vector width) and saved, so
sessions load in about a second instead of re-optimising for fifteen. Every fused graph is checked against the
unfused one in ONNX Runtime before it is kept (the bar of its precision, DESIGN.md section 5).

Engines go to ``engines/ort-<cpu>-<precision>/<component>.onnx``; the saved graph is specific to the CPU's vector
extensions (``<cpu>``, e.g. ``cpu-avx512``), and the runtime uses it only on a matching CPU with the same
onnxruntime version, falling back to the package's plain ONNX otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import EngineError
from engines.metrics import compare, judge, random_feeds
from engines.package import EngineEntry, EngineSet, FileEntry, ModelPackage, current_umask
from engines.specs import Range, ShapeProfile, ShapeRequest, symbolic_dims

log = logging.getLogger(__name__)

ORT_BUILD_SCHEMA = 1
DEFAULT_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
_CHAIN_OPS = ("Reshape", "Transpose")


def cpu_tag() -> str:
    """The CPU family an NCHWc-optimised graph is specific to: machine and widest vector extension."""
    machine = platform.machine().lower()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    for extension in ("avx512f", "avx2", "neon", "asimd"):
        if extension in flags:
            return f"cpu-{machine}-{extension}"
    return f"cpu-{machine}"


# ---------------------------------------------------------------------------------------------- attention fusion


@dataclass
class _Graph:
    """Producer/consumer indexes over an ONNX graph, and its constant values."""

    model: Any

    def __post_init__(self) -> None:
        from onnx import numpy_helper

        graph = self.model.graph
        self.producer = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in graph.output}

    def only_consumer(self, tensor: str, op_type: str) -> Any | None:
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type and tensor not in self.outputs else None

    def head_split_source(self, tensor: str) -> tuple[str, list[Any]]:
        """Walk back through Reshape/Transpose to the projection's output; returns it and the nodes walked."""
        walked = []
        node = self.producer.get(tensor)
        while node is not None and node.op_type in _CHAIN_OPS:
            walked.append(node)
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor, walked

    def scalar(self, tensor: str) -> float | None:
        value = self.constants.get(tensor)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _heads(graph: _Graph, chain: Sequence[Any]) -> int | None:
    """num_heads from the head-splitting Reshape: its shape is [batch, tokens, heads, head_dim]."""
    for node in reversed(chain):  # nearest the projection first
        if node.op_type != "Reshape":
            continue
        shape = graph.constants.get(node.input[1])
        if shape is None and node.input[1] in graph.producer and graph.producer[node.input[1]].op_type == "Concat":
            parts = [graph.constants.get(i) for i in graph.producer[node.input[1]].input]
            if len(parts) == 4 and parts[2] is not None and parts[3] is not None:
                return int(parts[2].reshape(-1)[0])
        elif shape is not None and shape.size == 4:
            return int(shape[2])
    return None


def fuse_attention(model: Any) -> tuple[Any, int]:
    """Rewrite every scaled-dot-product attention of a dynamo export into com.microsoft.MultiHeadAttention.

    Matches ``Softmax(MatMul(Mul(q_heads, a), Mul(k_heads_t, b))) @ v_heads -> Transpose -> Reshape`` where the
    ``*_heads`` come from the q/k/v projections through Reshape/Transpose only. Anything else is left alone.
    """
    import onnx
    from onnx import helper

    graph = _Graph(model)
    removed: set[int] = set()
    added = []
    fused = 0
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        scores = graph.producer.get(softmax.input[0])
        weighted = graph.only_consumer(softmax.output[0], "MatMul")
        if scores is None or scores.op_type != "MatMul" or weighted is None:
            continue
        merge = graph.only_consumer(weighted.output[0], "Transpose")
        reshape = graph.only_consumer(merge.output[0], "Reshape") if merge is not None else None
        scaled = [graph.producer.get(name) for name in scores.input]
        if reshape is None or any(s is None or s.op_type != "Mul" for s in scaled):
            continue
        factors = [graph.scalar(s.input[1]) for s in scaled]  # type: ignore[union-attr]
        if any(f is None for f in factors):
            continue
        query, query_chain = graph.head_split_source(scaled[0].input[0])  # type: ignore[union-attr]
        key, key_chain = graph.head_split_source(scaled[1].input[0])  # type: ignore[union-attr]
        value, value_chain = graph.head_split_source(weighted.input[1])
        heads = _heads(graph, query_chain)
        sources = [graph.producer.get(t) for t in (query, key, value)]
        if heads is None or any(s is None or s.op_type not in ("MatMul", "Gemm", "Add") for s in sources):
            continue
        node = helper.make_node(
            "MultiHeadAttention",
            [query, key, value],
            [reshape.output[0]],
            name=f"fused_attention_{fused}",
            domain="com.microsoft",
            num_heads=heads,
            scale=float(factors[0] * factors[1]),  # type: ignore[operator]
        )
        added.append((reshape, node))
        for dead in (softmax, scores, *scaled, weighted, merge, reshape):
            removed.add(id(dead))
        fused += 1
    if not fused:
        return model, 0
    replacement = {id(old): new for old, new in added}
    nodes = [replacement.get(id(n), n) for n in model.graph.node if id(n) not in removed or id(n) in replacement]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _remove_dead_nodes(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model, fused


def _remove_dead_nodes(model: Any) -> None:
    """Drop nodes none of whose outputs is used (the head-splitting chains left behind), to a fixed point."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for node in model.graph.node for name in node.input} | outputs
        alive = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(alive) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(alive)


# ---------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class OrtBuild:
    component: str
    skipped: bool
    fused_attention: int
    seconds: float
    load_seconds: float
    verification: dict[str, Any]


TARGETS = ("cpu", "cuda")


def target_tag(target: str) -> str:
    """What an engine set is specific to: this CPU's family (``cpu``), or any GPU of ONNX Runtime's CUDA provider."""
    if target not in TARGETS:
        raise EngineError(f"unknown build-ort target {target!r}; choose {' or '.join(TARGETS)}")
    return cpu_tag() if target == "cpu" else "cuda"


def ort_engine_set_name(precision: str, target: str = "cpu") -> str:
    return f"ort-{target_tag(target)}-{precision}"


def build_ort_engines(
    package_path: Path,
    precision: str = "fp32",
    components: Sequence[str] = DEFAULT_COMPONENTS,
    force: bool = False,
    progress: Callable[[str], None] = log.info,
    target: str = "cpu",
) -> tuple[str, list[OrtBuild]]:
    """Engines for ``target``: ``cpu`` fuses attention and saves the graph optimised for this CPU; ``cuda`` fuses
    attention only (the CUDA provider runs MultiHeadAttention as flash / memory-efficient attention, and optimises
    the graph itself when the session opens)."""
    import onnxruntime as ort

    package = ModelPackage.open(package_path)
    name = ort_engine_set_name(precision, target)
    builds = []
    for component in components:
        package = ModelPackage.open(package_path)
        variant = package.variant(component, precision)
        key = hashlib.sha256(json.dumps({
            "schema": ORT_BUILD_SCHEMA, "onnx": [package.manifest.files[f].sha256 for f in variant.files],
            "onnxruntime": ort.__version__, "cpu": target_tag(target),
        }, sort_keys=True).encode()).hexdigest()
        existing = package.manifest.engines.get(name)
        entry = existing.components.get(component) if existing else None
        if not force and entry is not None and entry.key == key and package.path(entry.plan).is_file():
            progress(f"{component}: up to date ({entry.plan}); --force rebuilds")
            builds.append(OrtBuild(component, True, 0, 0.0, 0.0, {}))
            continue
        builds.append(_build_one(package, component, precision, name, key, progress, target))
    return name, builds


def _build_one(
    package: ModelPackage, component: str, precision: str, set_name: str, key: str, progress: Callable[[str], None],
    target: str = "cpu",
) -> OrtBuild:
    import onnx
    import onnxruntime as ort

    variant = package.variant(component, precision)
    for relative in variant.files:
        package.verify_file(relative)
    started = time.perf_counter()
    engines_dir = package.path("engines")
    engines_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-ort-{component}-", dir=engines_dir))
    try:
        progress(f"{component}: fusing attention ({variant.onnx})")
        model, fused = fuse_attention(onnx.load(str(package.path(variant.onnx))))
        stem = "fused" if target == "cpu" else component
        fused_path = work / f"{stem}.onnx"
        onnx.save_model(model, str(fused_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{stem}.onnx.data", size_threshold=1024)
        del model
        if target == "cpu":
            progress(f"{component}: {fused} attention blocks fused; optimising for this CPU and saving")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            options.optimized_model_filepath = str(work / f"{component}.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             f"{component}.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
        else:
            progress(f"{component}: {fused} attention blocks fused (the CUDA provider optimises the rest at load)")
        progress(f"{component}: checking the optimised graph against the exported one in ONNX Runtime")
        verification = _verify(package, component, precision, work / f"{component}.onnx")
        if not verification["passed"]:
            raise EngineError(f"{component}: the optimised graph misses the bar: {'; '.join(verification['failures'])}")
        load_seconds = verification.pop("load_seconds")
        folder = package.path(f"engines/{set_name}")
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for file_name in (f"{component}.onnx.data", f"{component}.onnx"):  # data first: the .onnx names it
            source = work / file_name
            if source.is_file():
                os.chmod(source, 0o666 & ~current_umask())
                os.replace(source, folder / file_name)
                written.append(f"engines/{set_name}/{file_name}")
        report = f"engines/{set_name}/{component}.build.json"
        (folder / f"{component}.build.json").write_text(
            json.dumps({"fused_attention": fused, "verification": verification}, indent=1) + "\n", encoding="utf-8")
        seconds = time.perf_counter() - started
        _record(package, set_name, precision, EngineEntry(
            component=component,
            plan=f"engines/{set_name}/{component}.onnx",
            profile=ShapeProfile(component, {}),
            key=key,
            build_seconds=round(seconds, 3),
            onnx_sha256=package.manifest.files[variant.onnx].sha256,
            onnx_dtype=precision,
            precision_summary=report,
            layer_precisions={"fused_attention": fused},
        ), [*written, report], target)
        progress(f"{component}: done in {seconds:.1f}s; loads in {load_seconds:.1f}s")
        return OrtBuild(component, False, fused, seconds, load_seconds, verification)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify(package: ModelPackage, component: str, precision: str, optimized: Path) -> dict[str, Any]:
    import onnxruntime as ort

    variant = package.variant(component, precision)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(package.path(variant.onnx)), options, providers=["CPUExecutionProvider"])
    tick = time.perf_counter()
    fast_options = ort.SessionOptions()
    fast_options.log_severity_level = 3
    fast_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    candidate = ort.InferenceSession(str(optimized), fast_options, providers=["CPUExecutionProvider"])
    load_seconds = time.perf_counter() - tick
    constants = package.constants
    vocab = len(json.loads(package.path("tokenizer/vocab.json").read_text(encoding="utf-8")))
    rng = np.random.default_rng(0)
    cases, failures = [], []
    for batch, rows, columns in ((1, 1, 1), (2, 1, 2)):
        dims = symbolic_dims(batch, rows * constants.spatial_multiple, columns * constants.spatial_multiple,
                             constants.vae_scale_factor)
        feeds = {name: value.astype(t.dtype) if t.dtype.startswith("float") else value
                 for (name, value), t in zip(random_feeds(variant.spec, dims, rng, vocab).items(), variant.spec.inputs,
                                             strict=True)}
        expected = reference.run(None, feeds)
        actual = candidate.run(None, feeds)
        figures = [compare(component, t.name, a.astype(np.float32), e.astype(np.float32))
                   for t, a, e in zip(variant.spec.outputs, actual, expected, strict=True)]
        # fp16 graphs round differently once fused: they are held to the fp16 bar, fp32 graphs to the fp32 one.
        failures += [reason for f in figures if (reason := judge(component, precision, f))]
        cases.append({"dims": dims, "outputs": [f.__dict__ | {"shape": list(f.shape)} for f in figures]})
    return {"passed": not failures, "failures": failures, "cases": cases, "load_seconds": load_seconds}


def _record(
    package: ModelPackage, set_name: str, precision: str, entry: EngineEntry, files: Sequence[str], target: str
) -> None:
    import onnxruntime as ort

    current = ModelPackage.open(package.root)
    manifest = current.manifest
    existing = manifest.engines.get(set_name)
    components = {**(existing.components if existing else {}), entry.component: entry}
    engine_set = EngineSet(
        name=set_name,
        backend="ort",
        library="onnxruntime",
        library_version=ort.__version__,
        archs=(target_tag(target),),
        precision=precision,
        request=ShapeRequest(Range.fixed(1), Range.fixed(current.constants.default_height),
                             Range.fixed(current.constants.default_width)),
        components=components,
    )
    listed = dict(manifest.files)
    for relative in files:
        listed[relative] = FileEntry.of(current.path(relative))
    current.write_manifest(replace(manifest, engines={**manifest.engines, set_name: engine_set}, files=listed))
