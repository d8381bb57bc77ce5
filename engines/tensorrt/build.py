"""``build-trt`` (build time): one builder for TensorRT and TensorRT-RTX, fp16 routes, graph sanitising, and a
per-layer precision report captured from the builder itself (proof of precision without a GPU).

Precision routes (docs/design.md, "TensorRT and TensorRT-RTX builds"):
- TensorRT-RTX networks are strongly typed, so fp16 engines come from fp16 ONNX: the package's ``--dtype fp16``
  export when present, else the fp32 export converted here (ONNX Runtime's float16 converter, de-duplicated and
  re-sorted, then checked against fp32 in ONNX Runtime before use; half-precision export is the sturdier route).
- Full TensorRT takes the fp16 export strongly typed when present, else the fp32 export with the FP16 builder flag
  (TensorRT then keeps in fp32 whatever it judges fragile).
- A VAE whose config sets ``force_upcast`` (SDXL's overflows in fp16) is built from its fp32 export in fp32 inside
  an fp16 set, as diffusers decodes it; the runtime casts the latents to the engine's float32 input.
Engines land in ``engines/<backend>-<archs>-<precision>/<component>.plan`` with a ``<component>.layers.json``
report. Cache key, work folder, publishing and the manifest record are ``engines.build``'s.

Refittable builds (``BuildRequest.refittable``, for LoRA without a rebuild): the weights the source ONNX's weight map
lists are marked refittable one by one (``REFIT_INDIVIDUAL``), everything else stays constant for the optimiser, and
``<component>.weights.json`` beside the plan names the weights the plan can take (with their base values in the
package's ONNX data). TensorRT-RTX 1.7 compiles refittable plans with CUDA, so they are built where a GPU is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from core.families import get_family
from core.files import publish_files, work_folder, write_bytes_atomic
from core.manifest import ComponentVariant, EngineEntry, EngineSet, Manifest, TrtEngineEntry, TrtEngineSet
from core.metrics import verification_dims, verify_outputs
from core.package import ModelPackage
from core.profiles import shape_profiles
from core.specs import BuildConfig, ShapeProfile, ShapeRequest
from core.weights import WeightMap, read_stored
from engines.build import BuildJob, BuildOutcome, Compiled, build_engine_set
from engines.errors import EngineError
from engines.onnx_graphs import sanitize_onnx, save_onnx
from engines.ort.session import open_session, run_session
from engines.tensorrt import api
from engines.tensorrt.api import RTX_ARCHS, Library, load_library, local_gpu_arch, normalize_arch

log = logging.getLogger(__name__)

BUILD_SCHEMA = 1
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


@dataclass(frozen=True)
class BuildRequest:
    package: Path
    config: BuildConfig
    shapes: ShapeRequest
    components: tuple[str, ...] | None = None
    """None: every component of the package."""
    force: bool = False
    refittable: bool = False
    """Plans whose LoRA-changeable weights can be refitted at load time (components the family gives LoRAs to; the
    others build as usual). Needs the package's weight maps (an export by a diffship with LoRA support)."""


@dataclass(frozen=True)
class OnnxChoice:
    variant: ComponentVariant
    strongly_typed: bool
    fp16_flag: bool
    route: str


# ---------------------------------------------------------------------------------------------- targets


def _refuse_full_tensorrt_without_gpu() -> NoReturn:
    raise EngineError(
        "full TensorRT builds engines for the GPU it runs on and needs one (none found); for ahead-of-time builds "
        "without a GPU use --backend trt-rtx --arch sm86,sm89,... (TensorRT-RTX)"
    )


def _refuse_refittable_without_gpu(library: Library) -> NoReturn:
    # Observed with TensorRT-RTX 1.7.1 on a CPU-only machine: every refit flavour (REFIT, REFIT_INDIVIDUAL,
    # REFIT_IDENTICAL, STRIP_PLAN) fails in the compiler's JIT with CHECK(status == CUDA_SUCCESS), even for one MatMul.
    raise EngineError(
        f"refittable engines need an NVIDIA GPU here (none found): {library.name} {library.version} compiles them "
        "with CUDA; run build-trt --refittable on a machine with an NVIDIA GPU and driver, or build without "
        "--refittable (LoRAs then run with --backend ort)"
    )


def resolve_archs(library: Library, requested: Sequence[str]) -> tuple[str, ...]:
    """The compute capabilities to build for; full TensorRT builds only for the GPU present."""
    archs = tuple(dict.fromkeys(normalize_arch(a) for a in requested))
    local = local_gpu_arch()
    if not library.ahead_of_time:
        if local is None:
            _refuse_full_tensorrt_without_gpu()
        if archs and archs != (local,):
            raise EngineError(
                f"full TensorRT builds only for the GPU present ({local}), not {', '.join(archs)}; drop --arch, or use "
                "--backend trt-rtx for ahead-of-time builds"
            )
        return (local,)
    if not archs:
        if local is None:
            raise EngineError(
                "no GPU here to build for: give --arch with the target compute capabilities, e.g. --arch sm86,sm89 "
                f"(TensorRT-RTX builds ahead of time for {', '.join(RTX_ARCHS)})"
            )
        archs = (local,)
    unsupported = [a for a in archs if a not in RTX_ARCHS]
    if unsupported:
        raise EngineError(
            f"TensorRT-RTX cannot target {', '.join(unsupported)}; it builds for {', '.join(RTX_ARCHS)} "
            "(datacentre GPUs such as Hopper sm90 need --backend trt, full TensorRT, on that GPU)"
        )
    return archs


def engine_set_name(backend: str, archs: Sequence[str], precision: str) -> str:
    return f"{backend}-{'+'.join(archs)}-{precision}"


# ---------------------------------------------------------------------------------------------- the builder


class TensorRTBuilder:
    """``build-trt``'s half of the orchestration: choose the ONNX, sanitise, build, report the layers' precision."""

    def __init__(
        self, package: ModelPackage, config: BuildConfig, shapes: ShapeRequest, refittable: bool = False
    ) -> None:
        if config.precision not in ("fp16", "fp32"):
            raise EngineError(f"precision {config.precision!r} is not supported; choose fp16 or fp32")
        if config.backend == "trt" and local_gpu_arch() is None:
            _refuse_full_tensorrt_without_gpu()
        self.library = load_library(config.backend)
        if refittable and local_gpu_arch() is None:
            _refuse_refittable_without_gpu(self.library)
        self.backend = self.library.backend
        self.config = replace(config, archs=resolve_archs(self.library, config.archs))
        self.shapes = shapes
        family = get_family(package.manifest.family)
        self.refit_components = frozenset(family.adapters) if refittable else frozenset()
        """Components built refittable: the ones the family gives LoRAs to."""
        specs = {c: package.variant(c, "fp32" if "fp32" in variants else "fp16").spec
                 for c, variants in package.manifest.components.items()}
        self.profiles = shape_profiles(shapes, package.constants, specs, family.guided)

    def set_name(self, package: ModelPackage) -> str:
        return engine_set_name(self.library.backend, self.config.archs, self.config.precision)

    def job(self, package: ModelPackage, component: str, progress: Callable[[str], None]) -> BuildJob:
        choice = choose_onnx(package, component, self.config.precision, self.library, progress)
        files = ModelPackage.open(package.root).manifest.files  # a conversion may just have added the fp16 ONNX
        refit_map = self._refit_source(package, component, choice.variant)
        key = engine_key(choice, self.profiles[component], self.config, self.library,
                         files[refit_map].sha256 if refit_map is not None else None)
        return BuildJob(component, choice.variant, files[choice.variant.onnx].sha256, key,
                        {"choice": choice, "refit_map": refit_map})

    def _refit_source(self, package: ModelPackage, component: str, variant: ComponentVariant) -> str | None:
        """The weight map of the ONNX a refittable plan is built from; None when the plan is not refittable."""
        if component not in self.refit_components:
            return None
        if variant.weight_map is None:
            raise EngineError(
                f"{component}: {variant.onnx} has no weight map, which --refittable needs (it names the weights a "
                f"LoRA changes); re-export the package with this diffship (python cli.py export ... --out "
                f"{package.root}), then build again"
            )
        return variant.weight_map

    def compile(self, package: ModelPackage, job: BuildJob, work: Path, progress: Callable[[str], None]) -> Compiled:
        choice: OnnxChoice = job.settings["choice"]
        component, config = job.component, self.config
        progress(f"{component}: sanitising {choice.variant.onnx} (constant folding, clean-up, topological sort)")
        sanitized = sanitize_onnx(package.path(choice.variant.onnx), work / "sanitized.onnx")
        refit = self._refit_map(package, job, sanitized)
        progress(f"{component}: building from {choice.route} (optimisation level {config.optimization_level}"
                 + (f", {len(refit.slots)} weights refittable)" if refit is not None else ")"))
        tick = time.perf_counter()
        refit_names = tuple(slot.initializer for slot in refit.slots.values()) if refit is not None else None
        plan, messages, refused = build_plan(sanitized, self.profiles[component], config, self.library, choice,
                                             _timing_cache_path(package, self.library), refit_names)
        seconds = time.perf_counter() - tick
        layers = parse_layer_report(messages)
        summary = summarize_layers(layers)
        progress(f"{component}: built {len(plan) / 1e6:.1f} MB in {seconds:.1f}s; {describe_summary(summary)}")
        (work / f"{component}.plan").write_bytes(plan)
        report = {"library": self.library.name, "version": self.library.version, "archs": list(config.archs),
                  "precision": config.precision, "route": choice.route, "summary": summary, "layers": layers}
        (work / f"{component}.layers.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        files: tuple[str, ...] = (f"{component}.plan", f"{component}.layers.json")
        details: dict[str, Any] = {"route": choice.route, "plan_bytes": len(plan), "summary": summary}
        if refit is not None:
            refit = without(refit, refused, "the TensorRT network has no weights of this name (its parser folded them)")
            (work / f"{component}.weights.json").write_text(json.dumps(refit.to_json(), indent=1) + "\n",
                                                            encoding="utf-8")
            files += (f"{component}.weights.json",)
            details["refittable"] = len(refit.slots)
        return Compiled(files, seconds, details)

    def _refit_map(self, package: ModelPackage, job: BuildJob, sanitized: Path) -> WeightMap | None:
        """The weights to mark refittable (None: a plain plan)."""
        if job.settings["refit_map"] is None:
            return None
        refit = parsed_weight_map(package, job.settings["refit_map"], sanitized)
        if not refit.slots:
            raise EngineError(
                f"{job.component}: none of the weights a LoRA changes is left in the graph TensorRT parses "
                f"({next(iter(refit.unmapped.values()), 'none mapped')}); build without --refittable"
            )
        return refit

    def verify(
        self, package: ModelPackage, job: BuildJob, compiled: Compiled, work: Path, progress: Callable[[str], None]
    ) -> dict[str, Any]:
        # Running a plan needs a GPU it was built for; what can be checked anywhere is the builder's own account of
        # each layer's precision, recorded beside the plan. Pipelines are checked against ONNX Runtime on a GPU
        # (tests marked gpu).
        return {"numeric": "not run at build time (ahead-of-time plans need their GPU)",
                "compute_layers": compiled.details["summary"]["compute_layers"]}

    def entry(self, set_name: str, job: BuildJob, compiled: Compiled) -> EngineEntry:
        refittable = "refittable" in compiled.details
        return TrtEngineEntry(
            component=job.component,
            plan=f"engines/{set_name}/{job.component}.plan",
            profile=self.profiles[job.component],
            key=job.key,
            build_seconds=round(compiled.seconds, 3),
            source_onnx_sha256=job.source_sha256,
            source_dtype=job.source.dtype,
            layer_report=f"engines/{set_name}/{job.component}.layers.json",
            compute_layers=compiled.details["summary"]["compute_layers"],
            refittable=refittable,
            weight_map=f"engines/{set_name}/{job.component}.weights.json" if refittable else None,
        )

    def engine_set(self, set_name: str, components: Mapping[str, EngineEntry]) -> EngineSet:
        entries = {name: entry for name, entry in components.items() if isinstance(entry, TrtEngineEntry)}
        return TrtEngineSet(set_name, self.library.backend, self.library.name, self.library.version,
                            self.config.archs, self.config.precision, self.shapes, entries)


def build_engines(request: BuildRequest, on_progress: Callable[[str], None] | None = None) -> BuildOutcome:
    """Build (or find up to date) a TensorRT / TensorRT-RTX engine for every requested component of the package."""
    package = ModelPackage.open(request.package)
    builder = TensorRTBuilder(package, request.config, request.shapes, request.refittable)
    if on_progress is not None:
        config = builder.config
        on_progress(f"{builder.library.name} {builder.library.version}, targets {', '.join(config.archs)}, "
                    f"{config.precision} -> engines/{builder.set_name(package)}")
    return build_engine_set(request.package, builder, request.components, request.force, on_progress)


def read_layer_summary(package: ModelPackage, entry: EngineEntry) -> dict[str, Any]:
    """The precision summary of a built TensorRT engine, from its layer report ({} for any other entry)."""
    if isinstance(entry, TrtEngineEntry) and entry.layer_report and package.path(entry.layer_report).is_file():
        summary = json.loads(package.path(entry.layer_report).read_text(encoding="utf-8"))["summary"]
        return dict(summary)
    return {}


def engine_key(
    choice: OnnxChoice, profile: ShapeProfile, config: BuildConfig, library: Library, refit_map_sha256: str | None = None
) -> str:
    """Digest of everything the plan depends on; ``refit_map_sha256``: the digest of the weight map whose weights a
    refittable plan marks (None: not refittable, and the key is what it was before refittable builds existed)."""
    inputs = {
        "schema": BUILD_SCHEMA,
        "onnx": choice.variant.onnx,
        "onnx_files": choice.variant.files,
        "strongly_typed": choice.strongly_typed,
        "fp16_flag": choice.fp16_flag,
        "profile": profile.to_json(),
        "precision": config.precision,
        "archs": list(config.archs),
        "library": [library.name, library.version],
        "optimization_level": config.optimization_level,
        "workspace_bytes": config.workspace_bytes,
    }
    if refit_map_sha256 is not None:
        inputs["refittable"] = {"weight_map": refit_map_sha256}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- ONNX preparation


def choose_onnx(
    package: ModelPackage, component: str, precision: str, library: Library, progress: Callable[[str], None]
) -> OnnxChoice:
    """Which of the package's ONNX models feeds the builder, and how (see the module docstring)."""
    variants = package.manifest.components[component]
    if precision == "fp32":
        variant = package.variant(component, "fp32")
        return OnnxChoice(variant, library.always_strongly_typed, False, "fp32 export")
    if package.constants.upcasts(component) and "fp32" in variants:
        # An fp16 VAE with force_upcast overflows to NaN at large sizes; the runtime casts its latents to fp32.
        return OnnxChoice(package.variant(component, "fp32"), library.always_strongly_typed, False,
                          "fp32 export (force_upcast)")
    if "fp16" in variants:
        route = "fp16 export" if not variants["fp16"].verification.get("converted_from") else "fp16 (converted from fp32)"
        return OnnxChoice(variants["fp16"], True, False, route)
    if not library.always_strongly_typed:
        return OnnxChoice(package.variant(component, "fp32"), False, True, "fp32 export + FP16 builder flag")
    progress(f"{component}: the package has no fp16 export; converting the fp32 ONNX (export --dtype fp16 is sturdier)")
    variant = convert_to_fp16(package, component)
    return OnnxChoice(variant, True, False, "fp16 (converted from fp32)")


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
        vocab = len(json.loads(package.path("tokenizer/vocab.json").read_text(encoding="utf-8")))
        verification = verify_outputs(source.spec, "fp16", verification_dims(package.constants),
                                      lambda feeds: run_session(fp32, feeds), lambda feeds: run_session(fp16, feeds),
                                      vocab, seed=0)
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

    from engines.weight_maps import map_weights, torch_layout_weights

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


# ---------------------------------------------------------------------------------------------- refittable weights


def parsed_weight_map(package: ModelPackage, source_map: str, sanitized: Path) -> WeightMap:
    """The source ONNX's weight map cut to the weights the sanitised graph (what the parser reads) still holds, by name
    and unchanged: the names a refittable plan knows, with base values the package's ONNX data still has."""
    source = WeightMap.read(package.verify_file(source_map), source_map)
    arrays = _initializers(sanitized, {slot.initializer for slot in source.slots.values()})
    folded, changed = [], []
    for module, slot in source.slots.items():
        found = arrays.get(slot.initializer)
        if found is None:
            folded.append(module)
        elif found.dtype != np.dtype(slot.dtype) or tuple(found.shape) != tuple(slot.dims) or \
                not np.array_equal(found, read_stored(package.root, slot)):
            changed.append(module)
    weight_map = without(source, folded, "constant folding before the TensorRT parser folded it into another")
    return without(weight_map, changed, "constant folding before the TensorRT parser changed its values")


def without(weight_map: WeightMap, modules_or_names: Sequence[str], reason: str) -> WeightMap:
    """``weight_map`` with the slots named (by module or initializer) moved to ``unmapped`` with ``reason``."""
    dropped = set(modules_or_names)
    gone = {m for m, slot in weight_map.slots.items() if m in dropped or slot.initializer in dropped}
    if not gone:
        return weight_map
    log.warning("%s: %d weights a LoRA could change are not refittable in the plan: %s", weight_map.component,
                len(gone), reason)
    return WeightMap(weight_map.component, weight_map.graph,
                     {m: slot for m, slot in weight_map.slots.items() if m not in gone},
                     {**weight_map.unmapped, **{m: reason for m in sorted(gone)}})


def _initializers(graph: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The initializers ``names`` of a saved graph (inline or in its external data)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph), load_external_data=False)
    return {t.name: numpy_helper.to_array(t, base_dir=str(graph.parent))
            for t in model.graph.initializer if t.name in names}


# ---------------------------------------------------------------------------------------------- the TensorRT builder API


def _timing_cache_path(package: ModelPackage, library: Library) -> Path:
    return package.path(f"engines/timing-cache/{library.name}-{library.version}.cache")


def _make_monitor() -> Any:
    """A progress monitor through which a build is cancelled: TensorRT calls it from inside the build, where a
    KeyboardInterrupt would be swallowed, so an interrupt only sets a flag and the next step answers "stop"."""

    class CancellingMonitor(api.trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            api.trt.IProgressMonitor.__init__(self)
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            log.debug("builder phase %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            pass

    return CancellingMonitor()


@contextlib.contextmanager
def _interrupts_cancel(monitor: Any) -> Iterator[None]:
    """While TensorRT builds, SIGINT and SIGTERM ask the monitor to cancel; once the build has stopped, the signal is
    delivered again to the handler that was there before (Ctrl-C's KeyboardInterrupt, the CLI's SIGTERM exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def cancel(signum: int, frame: Any) -> None:
        monitor.cancelled = True
        received.append(signum)

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


def build_plan(
    onnx_path: Path,
    profile: ShapeProfile,
    config: BuildConfig,
    library: Library,
    choice: OnnxChoice,
    timing_cache: Path | None = None,
    refittable: Sequence[str] | None = None,
) -> tuple[bytes, list[str], tuple[str, ...]]:
    """Parse and build one engine; returns the serialized plan, every message the builder logged, and the names of
    ``refittable`` (weights to mark refittable; None: a plain plan) that the network did not have."""
    api.bind(library)
    trt = api.trt
    logger = api.capturing_logger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if choice.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)  # owns the weights the network refers to: kept until the build is done
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineError(f"{library.name} cannot parse {onnx_path.name}: "
                          + "; ".join(errors + api.logged_errors(logger)))
    builder_config = _builder_config(builder, profile, config, library, choice)
    refused = mark_refittable(network, builder_config, refittable) if refittable is not None else ()
    cache = _load_timing_cache(builder_config, timing_cache)
    monitor = _make_monitor()
    builder_config.progress_monitor = monitor
    with _interrupts_cancel(monitor):
        serialized = serialize_network(builder, network, builder_config)
    if serialized is None and getattr(monitor, "cancelled", False):
        # Cancelled by an interrupt whose re-delivery did not raise here (seen once under heavy load): still an
        # interrupt, not a build failure.
        raise KeyboardInterrupt
    if serialized is None:
        raise EngineError(f"{library.name} failed to build {onnx_path.name}: "
                          + " | ".join(api.logged_errors(logger) or ["no error message"]))
    if cache is not None and timing_cache is not None:
        _save_timing_cache(builder_config, timing_cache)
    return bytes(memoryview(serialized)), [message for _, message in logger.messages], refused


def _builder_config(builder: Any, profile: ShapeProfile, config: BuildConfig, library: Library,
                    choice: OnnxChoice) -> Any:
    trt = api.trt
    builder_config = builder.create_builder_config()
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    builder_config.builder_optimization_level = config.optimization_level
    if config.workspace_bytes:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    if choice.fp16_flag:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if library.ahead_of_time:
        # TensorRT-RTX only: compute-capability targets (absent from full TensorRT's API, hence from its stubs).
        rtx_config: Any = builder_config
        capability: Any = getattr(trt, "ComputeCapability")  # noqa: B009
        rtx_config.num_compute_capabilities = len(config.archs)
        for index, arch in enumerate(config.archs):
            rtx_config.set_compute_capability(getattr(capability, arch.upper()), index)
    optimization_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.shapes.items():
        optimization_profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    builder_config.add_optimization_profile(optimization_profile)
    return builder_config


def mark_refittable(network: Any, builder_config: Any, names: Sequence[str]) -> tuple[str, ...]:
    """Mark exactly ``names`` refittable (REFIT_INDIVIDUAL: every other weight stays a constant the optimiser may
    fold); returns the names the network has no weights for."""
    builder_config.set_flag(api.trt.BuilderFlag.REFIT_INDIVIDUAL)
    refused = tuple(name for name in names if not network.mark_weights_refittable(name))
    if refused:
        log.debug("no weights named %s in the network", ", ".join(refused))
    return refused


def serialize_network(builder: Any, network: Any, builder_config: Any) -> Any:
    """The build itself (its own function: the one step tests without a GPU replace for refittable builds)."""
    return builder.build_serialized_network(network, builder_config)


def _load_timing_cache(builder_config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = builder_config.create_timing_cache(data)
    builder_config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def _save_timing_cache(builder_config: Any, path: Path) -> None:
    data = bytes(memoryview(builder_config.get_timing_cache().serialize()))
    if data:
        write_bytes_atomic(path, data)


# ---------------------------------------------------------------------------------------------- precision report


def parse_layer_report(messages: Sequence[str]) -> list[dict[str, Any]]:
    """Layers of the built engine with their data types, from the builder's DETAILED log.

    Two formats: Myelin's ``Layers:`` listing (``Name: ..., LayerType: gemm, Inputs: [{... Datatype: Half ...}]``)
    and classic TensorRT's ``Layer(CaskConvolution): name, Tactic: ..., in (Half[...]) -> out (Half[...])``.
    """
    layers = []
    for message in messages:
        if message.startswith("Layers:") or "LayerType:" in message:
            for match in _MYELIN_LAYER.finditer(message):
                layers.append({
                    "name": match["name"].strip(),
                    "type": match["kind"],
                    "inputs": _DTYPE_FIELD.findall(match["inputs"]),
                    "constants": _DTYPE_FIELD.findall(match["constants"]),
                    "outputs": _DTYPE_FIELD.findall(match["outputs"]),
                })
        for line in message.splitlines():
            classic = _CLASSIC_LAYER.match(line.strip())
            if classic:
                layers.append({
                    "name": classic["name"],
                    "type": classic["kind"],
                    "inputs": _DTYPE_WORD.findall(classic["inputs"]),
                    "constants": [],
                    "outputs": _DTYPE_WORD.findall(classic["outputs"]),
                })
    return layers


def summarize_layers(layers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts by layer type and data type; ``compute_layers`` counts convolutions and matrix products by input type."""
    by_type: dict[str, dict[str, int]] = {}
    compute: dict[str, dict[str, int]] = {"convolution": {}, "matmul": {}}
    for layer in layers:
        dtype = (layer["inputs"] or layer["outputs"] or ["none"])[0]
        by_type.setdefault(layer["type"], {}).setdefault(dtype, 0)
        by_type[layer["type"]][dtype] += 1
        kind = COMPUTE_LAYER_KINDS.get(layer["type"].lower())
        if kind:
            compute[kind][dtype] = compute[kind].get(dtype, 0) + 1
    return {"layers": len(layers), "by_type": by_type, "compute_layers": compute}


def describe_summary(summary: dict[str, Any]) -> str:
    parts = []
    for kind, counts in summary.get("compute_layers", {}).items():
        if counts:
            parts.append(f"{kind}s " + ", ".join(f"{n} {dtype}" for dtype, n in sorted(counts.items())))
    return "; ".join(parts) or "no convolution or matrix layers reported"
