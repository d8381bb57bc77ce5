"""``build-ort`` (build time): attention fused into MultiHeadAttention; for the CPU, the graph optimised once.

What it buys, measured on the full-size SD 1.5 UNet (BENCHMARKS.md): torch.onnx's dynamo exporter writes attention as
MatMul -> Softmax -> MatMul, which ONNX Runtime runs by materialising the [batch x heads, tokens, tokens] score matrix
(2 GB per self-attention at 512 px). ONNX Runtime's own transformer optimizer does not recognise that pattern, so
``fuse_attention`` rewrites it into ``com.microsoft.MultiHeadAttention``, whose CPU kernel works in tiles and whose CUDA
kernel is flash / memory-efficient attention. For the ``cpu`` target the fused graph is then optimised at
``ORT_ENABLE_ALL`` (including the NCHWc layout for this CPU's vector width) and saved, so a full-size UNet's session
opens in 2-4 s instead of 10-24 s (BENCHMARKS.md, sha256 check included); for ``cuda`` the fused graph is saved as it
is. Every graph is checked against
the exported one in ONNX Runtime before it is kept, at the bar of its precision (docs/design.md, "Parity bars").
The orchestration (cache key, work folder, publishing, manifest record) is ``engines.build``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.errors import command
from diffship.core.manifest import EngineEntry, EngineSet, OrtEngineEntry, OrtEngineSet
from diffship.core.metrics import Verification, verification_dims, verify_on_feeds, verify_outputs
from diffship.core.package import ModelPackage
from diffship.engines.build import BuildJob, BuildOutcome, Compiled, build_engine_set
from diffship.engines.errors import EngineError
from diffship.engines.onnx.feeds import vocab_size
from diffship.engines.onnx.session import import_onnxruntime, open_session, run_session
from diffship.engines.ort.targets import TARGETS, ort_engine_set_name, target_tag

log = logging.getLogger(__name__)

ORT_BUILD_SCHEMA = 3  # 3: weight maps
PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZED_COMPONENTS = ("unet",)
"""What ``--precision int8`` quantizes; the other components of an int8 set are built as for fp32."""
INT8_HELD_OUT = "int8-held-out.npz"
_FEED_ORDER = ("sample", "timestep", "encoder_hidden_states")
Calibration = Callable[[], Iterable[Mapping[str, Any]]]
"""Recorded UNet inputs (float32 feeds) for int8 calibration, produced when the UNet is built."""
_CHAIN_OPS = ("Reshape", "Transpose")


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
        if value is None and tensor in self.producer and self.producer[tensor].op_type == "Unsqueeze":
            value = self.constants.get(self.producer[tensor].input[0])  # TorchScript builds shapes from these
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def producer_through_casts(self, tensor: str) -> Any | None:
        node = self.producer.get(tensor)
        while node is not None and node.op_type == "Cast":
            node = self.producer.get(node.input[0])
        return node

    def is_default_scale_factor(self, tensor: str, query_heads: str) -> bool:
        """Whether ``tensor`` is TorchScript's symbolic form of SDPA's default scaling, applied half to q and half to
        k: ``sqrt(1 / sqrt(query_heads.shape[-1]))``, casts allowed between the steps."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "Sqrt":
            return False
        divide = self.producer_through_casts(node.input[0])
        if divide is None or divide.op_type != "Div" or self.scalar(divide.input[0]) != 1.0:
            return False
        root = self.producer_through_casts(divide.input[1])
        if root is None or root.op_type != "Sqrt":
            return False
        size = self.producer_through_casts(root.input[0])
        if size is None or size.op_type != "Slice" or self.scalar(size.input[1]) != -1:
            return False
        shape = self.producer.get(size.input[0])
        return shape is not None and shape.op_type == "Shape" and shape.input[0] == query_heads


def _heads(graph: _Graph, chain: Sequence[Any]) -> int | None:
    """num_heads from the head-splitting Reshape: its shape is [batch, tokens, heads, head_dim]."""
    for node in reversed(chain):  # nearest the projection first
        if node.op_type != "Reshape":
            continue
        shape = graph.constants.get(node.input[1])
        if shape is None and node.input[1] in graph.producer and graph.producer[node.input[1]].op_type == "Concat":
            parts = graph.producer[node.input[1]].input
            heads = graph.scalar(parts[2]) if len(parts) == 4 else None
            if heads is not None:
                return int(heads)
        elif shape is not None and shape.size == 4:
            return int(shape[2])
    return None


def fuse_attention(model: Any) -> tuple[Any, int]:
    """Rewrite every scaled-dot-product attention of an export into com.microsoft.MultiHeadAttention.

    Matches ``Softmax(MatMul(Mul(q_heads, a), Mul(k_heads_t, b))) @ v_heads -> Transpose -> Reshape`` where the
    ``*_heads`` come from the q/k/v projections through Reshape/Transpose only. The dynamo exporter writes ``a`` and
    ``b`` as constants; the TorchScript one (``--exporter legacy``, and every streamed export) computes them from q's
    shape, which is SDPA's default scale and MultiHeadAttention's too. Anything else is left alone.
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
        attributes: dict[str, Any] = {}
        if all(f is not None for f in factors):
            attributes["scale"] = float(factors[0] * factors[1])  # type: ignore[operator]
        elif not all(graph.is_default_scale_factor(s.input[1], scaled[0].input[0])  # type: ignore[union-attr]
                     for s in scaled):
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
            **attributes,
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


# ---------------------------------------------------------------------------------------------- the builder


@dataclass(frozen=True)
class OrtJob:
    """``build-ort``'s settings for one component."""

    quantize: bool
    """int8 only: this component is quantized on recorded inputs (``QUANTIZED_COMPONENTS``); the others of an int8
    set are built as for fp32."""


@dataclass(frozen=True)
class OrtCompiled:
    """What ``build-ort`` reports of one built graph."""

    fused_attention: int
    """Attention blocks rewritten into MultiHeadAttention."""


@dataclass(frozen=True)
class OrtCheck:
    """The built graph against the exported one in ONNX Runtime (docs/design.md, "Parity bars")."""

    verification: Verification
    load_seconds: float
    """How long the built graph's session took to open."""


OrtOutcome = BuildOutcome[OrtCompiled, OrtCheck]


@dataclass(frozen=True)
class OrtBuilder:
    """``build-ort``'s half of the orchestration: fuse, optimise for the target, check against the export."""

    precision: str = "fp32"
    target: str = "cpu"
    backend: str = "ort"
    calibration: Calibration | None = field(default=None, compare=False)
    """int8 only: the UNet inputs to calibrate activation ranges on (``runtime.calibration`` records them)."""
    calibration_key: str = ""
    """int8 only: what the calibration data depends on (prompts, steps, size), part of the build's cache key."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EngineError(f"precision {self.precision!r} is not supported; choose {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise EngineError(f"unknown build-ort target {self.target!r}; choose {' or '.join(TARGETS)}")
        if self.precision == "int8" and self.target != "cpu":
            raise EngineError("int8 engines are for ONNX Runtime's CPU provider; use fp16 for --target cuda")

    @property
    def source_precision(self) -> str:
        """The exported ONNX a build starts from: int8 quantizes the fp32 export."""
        return "fp32" if self.precision == "int8" else self.precision

    def quantizes(self, component: str) -> bool:
        return self.precision == "int8" and component in QUANTIZED_COMPONENTS

    def set_name(self, package: ModelPackage) -> str:
        return ort_engine_set_name(self.precision, self.target)

    def job(self, package: ModelPackage, component: str, progress: Callable[[str], None]) -> BuildJob:
        variant = package.variant(component, self.source_precision)
        inputs: dict[str, Any] = {
            "schema": ORT_BUILD_SCHEMA, "onnx": [package.manifest.files[f].sha256 for f in variant.files],
            "onnxruntime": import_onnxruntime().__version__, "target": target_tag(self.target),
        }
        if self.quantizes(component):
            inputs["int8"] = {"calibration": self.calibration_key}
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        return BuildJob(component, variant, package.manifest.files[variant.onnx].sha256, key,
                        OrtJob(self.quantizes(component)))

    def compile(
        self, package: ModelPackage, job: BuildJob[OrtJob], work: Path, progress: Callable[[str], None]
    ) -> Compiled[OrtCompiled]:
        import onnx

        from diffship.engines.onnx.graphs import save_onnx

        started = time.perf_counter()
        component = job.component
        quantization: dict[str, Any] = {}
        progress(f"{component}: fusing attention ({job.source.onnx})")
        model, fused = fuse_attention(onnx.load(str(package.path(job.source.onnx))))
        if self.target == "cuda":
            progress(f"{component}: {fused} attention blocks fused (the CUDA provider optimises the rest at load)")
            written = save_onnx(model, work / f"{component}.onnx", external=True)
        else:
            fused_path = work / "fused.onnx"
            save_onnx(model, fused_path, external=True)
            del model
            if job.settings.quantize:
                fused_path = self._quantize(fused_path, work, progress, quantization)
            progress(f"{component}: {fused} attention blocks fused; optimising for this CPU and saving")
            open_session(fused_path, optimization="all", optimized_model=work / f"{component}.onnx")
            written = [work / f"{component}.onnx", work / f"{component}.onnx.data"]
        report = {"fused_attention": fused, "target": target_tag(self.target), **quantization}
        (work / f"{component}.build.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        files = [p.name for p in reversed(written) if p.is_file()]  # external data before the graph that names it
        files.append(f"{component}.build.json")
        if job.source.weight_map is not None and not job.settings.quantize:  # int8 weights take no LoRA
            progress(f"{component}: finding the LoRA-changeable weights in the built graph")
            files.append(self._map_weights(package, job, work))
        return Compiled(tuple(files), time.perf_counter() - started, OrtCompiled(fused))

    def _quantize(self, fused: Path, work: Path, progress: Callable[[str], None], report: dict[str, Any]) -> Path:
        from diffship.engines.ort.quantize import cpu_has_int8_dot_product, quantize_unet

        if self.calibration is None:
            raise EngineError(f"int8 needs calibration data: build it with `{command('build-ort --precision int8')}`, "
                              "which records the UNet's inputs from the package's own denoising runs")
        if not cpu_has_int8_dot_product():
            log.warning("this CPU has no int8 dot-product instructions (VNNI); int8 still ran 1.7x faster than fp32 "
                        "on such a CPU (BENCHMARKS.md, \"int8\"), but less than it would with them")
        progress("unet: recording calibration inputs from the package's own denoising runs (fp32)")
        recorded = list(self.calibration())
        # Every 4th recorded input is held out of calibration: verify() judges the int8 graph on those.
        held_out = recorded[3::4]
        feeds = [f for k, f in enumerate(recorded) if k % 4 != 3]
        if not held_out or not feeds:
            raise EngineError(f"unet: {len(recorded)} recorded UNet inputs are too few to calibrate and verify int8 "
                              "(give more --calibration-steps)")
        np.savez(work / INT8_HELD_OUT, *[np.stack([f[name] for f in held_out]) for name in _FEED_ORDER],
                 names=np.array(_FEED_ORDER))
        progress(f"unet: quantizing to int8 on {len(feeds)} recorded UNet inputs ({len(held_out)} held out)")
        quantized = work / "quantized.onnx"
        try:
            report["int8"] = quantize_unet(fused, quantized, feeds)
        except ValueError as exc:
            raise EngineError(f"unet: int8 quantization failed: {exc}") from exc
        return quantized

    def _map_weights(self, package: ModelPackage, job: BuildJob[OrtJob], work: Path) -> str:
        """The built graph's weight map: the exported graph's weights found again (renamed, or reordered into
        NCHWc filters by the CPU optimiser), so that LoRAs apply to this graph too."""
        from diffship.core.weights import WeightMap
        from diffship.engines.onnx.weight_maps import EXPORT_LAYOUTS, NCHWC_LAYOUTS, map_weights, torch_layout_weights

        assert job.source.weight_map is not None
        package.verify_file(job.source.weight_map)
        source_map = WeightMap.read(package.path(job.source.weight_map), job.source.weight_map)
        graph = f"engines/{self.set_name(package)}/{job.component}.onnx"
        layouts = EXPORT_LAYOUTS if self.target == "cuda" else EXPORT_LAYOUTS + NCHWC_LAYOUTS
        weight_map = map_weights(work / f"{job.component}.onnx", graph, job.component,
                                 torch_layout_weights(package.root, source_map), layouts)
        if weight_map.unmapped:
            log.warning("%s: %d weights a LoRA could change are not separate in the built graph (%s)", job.component,
                        len(weight_map.unmapped), next(iter(weight_map.unmapped.values())))
        name = f"{job.component}.weights.json"
        (work / name).write_text(json.dumps(weight_map.to_json(), indent=1) + "\n", encoding="utf-8")
        return name

    def verify(
        self, package: ModelPackage, job: BuildJob[OrtJob], compiled: Compiled[OrtCompiled], work: Path,
        progress: Callable[[str], None],
    ) -> OrtCheck:
        component = job.component
        progress(f"{component}: checking the built graph against the exported one in ONNX Runtime")
        exported = open_session(package.path(job.source.onnx))
        tick = time.perf_counter()
        built = open_session(work / f"{component}.onnx", optimization="disable")
        load_seconds = time.perf_counter() - tick
        spec = job.source.spec.with_float_dtype("float32")
        bar = "int8" if job.settings.quantize else self.source_precision
        if bar == "int8":
            # Random inputs (text states of N(0, 1), say) lie outside every calibrated range; real ones do not.
            with np.load(work / INT8_HELD_OUT) as held:
                stacked = {str(name): held[f"arr_{k}"] for k, name in enumerate(held["names"])}
            cases = [({"held_out_call": k}, {name: values[k] for name, values in stacked.items()})
                     for k in range(len(stacked["sample"]))]
            verification = verify_on_feeds(spec, bar, cases, lambda feeds: run_session(exported, feeds),
                                           lambda feeds: run_session(built, feeds))
        else:
            verification = verify_outputs(
                spec, bar, verification_dims(package.constants),
                lambda feeds: run_session(exported, feeds), lambda feeds: run_session(built, feeds),
                vocab_size(package, component),
            )
        if not verification.passed:
            raise EngineError(f"{component}: the built graph misses the bar: {'; '.join(verification.failures)}")
        report_path = work / f"{component}.build.json"
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report.update(verification=verification.to_json(), load_seconds=load_seconds)
        report_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        progress(f"{component}: within the {bar} bar ({verification.describe()}); loads in {load_seconds:.1f}s")
        return OrtCheck(verification, load_seconds)

    def entry(self, set_name: str, job: BuildJob[OrtJob], compiled: Compiled[OrtCompiled]) -> EngineEntry:
        graph = f"engines/{set_name}/{job.component}.onnx"
        data = tuple(f"engines/{set_name}/{name}" for name in compiled.files if name.endswith(".onnx.data"))
        return OrtEngineEntry(
            component=job.component, graph=graph, data_files=data, key=job.key,
            build_seconds=round(compiled.seconds, 3), source_onnx_sha256=job.source_sha256,
            source_dtype=job.source.dtype, fused_attention=compiled.details.fused_attention,
            report=f"engines/{set_name}/{job.component}.build.json",
            weight_map=next((f"engines/{set_name}/{name}" for name in compiled.files if name.endswith(".weights.json")),
                            None),
        )

    def engine_set(self, set_name: str, components: Mapping[str, EngineEntry]) -> EngineSet:
        entries = {name: entry for name, entry in components.items() if isinstance(entry, OrtEngineEntry)}
        return OrtEngineSet(set_name, import_onnxruntime().__version__, target_tag(self.target), self.precision, entries)


def build_ort_engines(
    package_path: Path,
    precision: str = "fp32",
    components: Sequence[str] | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    target: str = "cpu",
    calibration: Calibration | None = None,
    calibration_key: str = "",
) -> OrtOutcome:
    """Build (or find up to date) the ``build-ort`` engine of every component for ``target`` (``cpu`` or ``cuda``);
    ``int8`` quantizes the UNet on ``calibration``'s recorded inputs (see ``engines.ort.quantize``)."""
    builder = OrtBuilder(precision, target, calibration=calibration, calibration_key=calibration_key)
    return build_engine_set(package_path, builder, components, force, progress)
