"""``build-trt`` (build time): one builder for TensorRT and TensorRT-RTX, precision routes, graph sanitising, and a
per-layer precision report captured from the builder itself (proof of precision without a GPU; ``layers``).

Precision routes (docs/design.md, "TensorRT and TensorRT-RTX builds"): every network is strongly typed, so the ONNX's
types are the engine's precision, on TensorRT-RTX, TensorRT 10.x and TensorRT 11.x alike (11.0 removed weak typing:
``BuilderFlag.FP16``/``INT8`` are gone and every network is strongly typed). fp16 engines come from fp16 ONNX: the
package's ``--dtype fp16`` export when present, else the fp32 export converted (``engines.onnx.fp16``: ONNX Runtime's
float16 converter, checked against fp32 in ONNX Runtime before use and added to the package; half-precision export is
the sturdier route). No build sets a precision builder flag. A VAE whose config sets ``force_upcast`` (SDXL's
overflows in fp16) is built from its fp32 export in fp32 inside an fp16 set, as diffusers decodes it; the runtime
casts the latents to the engine's float32 input.

Engines land in ``engines/<backend>-<archs>-<precision>[-<shapes>]/<component>.plan`` (``sets.engine_set_name``: a
shape request other than the default one names its own set) with a ``<component>.layers.json`` report. Cache key,
work folder, publishing and the manifest record are ``engines.build``'s; the key covers the sha256 of every file of
the source ONNX (graph and external data).

Refittable builds (``BuildRequest.refittable``, for LoRA without a rebuild): the weights the source ONNX's weight map
lists are marked refittable one by one (``REFIT_INDIVIDUAL``), everything else stays constant for the optimiser, and
``<component>.weights.json`` beside the plan names the weights the plan can take (with their base values in the
package's ONNX data). Which refit flags, and why: ``mark_refittable``. TensorRT-RTX 1.7 compiles refittable plans with
CUDA, so they are built where a GPU is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from diffship.core.errors import command
from diffship.core.families import get_family
from diffship.core.files import write_bytes_atomic
from diffship.core.manifest import ComponentVariant, EngineEntry, EngineSet, TrtEngineEntry, TrtEngineSet
from diffship.core.package import ModelPackage
from diffship.core.profiles import shape_profiles
from diffship.core.specs import BuildConfig, ShapeProfile, ShapeRequest
from diffship.core.weights import WeightMap, read_stored
from diffship.engines.build import BuildJob, BuildOutcome, Compiled, build_engine_set
from diffship.engines.errors import EngineError
from diffship.engines.onnx.fp16 import convert_to_fp16
from diffship.engines.onnx.graphs import sanitize_onnx
from diffship.engines.tensorrt import api
from diffship.engines.tensorrt.api import RTX_ARCHS, Library, load_library, local_gpu_arch, normalize_arch
from diffship.engines.tensorrt.layers import (
    Counts,
    LayerSummary,
    describe_summary,
    parse_layer_report,
    summarize_layers,
)
from diffship.engines.tensorrt.sets import default_shape_request, engine_set_name

if TYPE_CHECKING:
    import tensorrt as trt_types  # the API as the tensorrt stubs describe it (engines/tensorrt/api.py)

log = logging.getLogger(__name__)

BUILD_SCHEMA = 2
"""2: every network strongly typed (no FP16 builder flag); the key holds the source ONNX files' sha256."""


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
    """The ONNX a plan is built from; its types are the plan's precision (strongly typed networks)."""

    variant: ComponentVariant
    route: str
    """How it was chosen, for reports: ``fp16 export``, ``fp16 (converted from fp32)``, ``fp32 export``, ..."""


@dataclass(frozen=True)
class TrtJob:
    """``build-trt``'s settings for one component."""

    choice: OnnxChoice
    refit_map: str | None
    """The source ONNX's weight map whose weights the plan marks refittable; None: a plain plan."""


@dataclass(frozen=True)
class TrtCompiled:
    """What ``build-trt`` reports of one built plan."""

    route: str
    """The precision route (``OnnxChoice.route``)."""
    plan_bytes: int
    summary: LayerSummary
    """The builder's own account of its layers' types."""
    refittable: int | None = None
    """How many weights the plan can refit; None: a plain plan."""


@dataclass(frozen=True)
class TrtCheck:
    """What a TensorRT build can check without running the plan (which needs the GPU it was built for)."""

    numeric: str
    compute_layers: Counts


TrtOutcome = BuildOutcome[TrtCompiled, TrtCheck]


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
        self.default_shapes = default_shape_request(package.constants)
        family = get_family(package.manifest.family)
        self.refit_components = frozenset(family.adapters) if refittable else frozenset()
        """Components built refittable: the ones the family gives LoRAs to."""
        specs = {c: package.variant(c, "fp32" if "fp32" in variants else "fp16").spec
                 for c, variants in package.manifest.components.items()}
        self.profiles = shape_profiles(shapes, package.constants, specs, family.guided)

    def set_name(self, package: ModelPackage) -> str:
        return engine_set_name(self.library.backend, self.config.archs, self.config.precision, self.shapes,
                               self.default_shapes)

    def job(self, package: ModelPackage, component: str, progress: Callable[[str], None]) -> BuildJob[TrtJob]:
        choice = choose_onnx(package, component, self.config.precision, progress)
        files = ModelPackage.open(package.root).manifest.files  # a conversion may just have added the fp16 ONNX
        refit_map = self._refit_source(package, component, choice.variant)
        key = engine_key(choice, [files[f].sha256 for f in choice.variant.files], self.profiles[component],
                         self.config, self.library, files[refit_map].sha256 if refit_map is not None else None)
        return BuildJob(component, choice.variant, files[choice.variant.onnx].sha256, key, TrtJob(choice, refit_map))

    def _refit_source(self, package: ModelPackage, component: str, variant: ComponentVariant) -> str | None:
        """The weight map of the ONNX a refittable plan is built from; None when the plan is not refittable."""
        if component not in self.refit_components:
            return None
        if variant.weight_map is None:
            raise EngineError(
                f"{component}: {variant.onnx} has no weight map, which --refittable needs (it names the weights a "
                f"LoRA changes); re-export the package with this diffship ({command(f'export ... --out {package.root}')}), "
                "then build again"
            )
        return variant.weight_map

    def compile(
        self, package: ModelPackage, job: BuildJob[TrtJob], work: Path, progress: Callable[[str], None]
    ) -> Compiled[TrtCompiled]:
        choice = job.settings.choice
        component, config = job.component, self.config
        progress(f"{component}: sanitising {choice.variant.onnx} (constant folding, clean-up, topological sort)")
        sanitized = sanitize_onnx(package.path(choice.variant.onnx), work / "sanitized.onnx")
        refit = self._refit_map(package, job, sanitized)
        progress(f"{component}: building from {choice.route} (optimisation level {config.optimization_level}"
                 + (f", {len(refit.slots)} weights refittable)" if refit is not None else ")"))
        tick = time.perf_counter()
        refit_names = tuple(slot.initializer for slot in refit.slots.values()) if refit is not None else None
        plan, messages, refused = build_plan(sanitized, self.profiles[component], config, self.library,
                                             _timing_cache_path(package, self.library), refit_names)
        seconds = time.perf_counter() - tick
        layers = parse_layer_report(messages)
        summary = summarize_layers(layers)
        progress(f"{component}: built {len(plan) / 1e6:.1f} MB in {seconds:.1f}s; {describe_summary(summary)}")
        (work / f"{component}.plan").write_bytes(plan)
        report = {"library": self.library.name, "version": self.library.version, "archs": list(config.archs),
                  "precision": config.precision, "route": choice.route, "summary": summary.to_json(),
                  "layers": [layer.to_json() for layer in layers]}
        (work / f"{component}.layers.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        files: tuple[str, ...] = (f"{component}.plan", f"{component}.layers.json")
        if refit is None:
            return Compiled(files, seconds, TrtCompiled(choice.route, len(plan), summary))
        refit = without(refit, refused, "the TensorRT network has no weights of this name (its parser folded them)")
        (work / f"{component}.weights.json").write_text(json.dumps(refit.to_json(), indent=1) + "\n", encoding="utf-8")
        files += (f"{component}.weights.json",)
        return Compiled(files, seconds, TrtCompiled(choice.route, len(plan), summary, len(refit.slots)))

    def _refit_map(self, package: ModelPackage, job: BuildJob[TrtJob], sanitized: Path) -> WeightMap | None:
        """The weights to mark refittable (None: a plain plan)."""
        if job.settings.refit_map is None:
            return None
        refit = parsed_weight_map(package, job.settings.refit_map, sanitized)
        if not refit.slots:
            raise EngineError(
                f"{job.component}: none of the weights a LoRA changes is left in the graph TensorRT parses "
                f"({next(iter(refit.unmapped.values()), 'none mapped')}); build without --refittable"
            )
        return refit

    def verify(
        self, package: ModelPackage, job: BuildJob[TrtJob], compiled: Compiled[TrtCompiled], work: Path,
        progress: Callable[[str], None],
    ) -> TrtCheck:
        # Running a plan needs a GPU it was built for; what can be checked anywhere is the builder's own account of
        # each layer's precision, recorded beside the plan. Pipelines are checked against ONNX Runtime on a GPU
        # (tests marked gpu).
        return TrtCheck("not run at build time (ahead-of-time plans need their GPU)",
                        compiled.details.summary.compute_layers)

    def entry(self, set_name: str, job: BuildJob[TrtJob], compiled: Compiled[TrtCompiled]) -> EngineEntry:
        refittable = compiled.details.refittable is not None
        return TrtEngineEntry(
            component=job.component,
            plan=f"engines/{set_name}/{job.component}.plan",
            profile=self.profiles[job.component],
            key=job.key,
            build_seconds=round(compiled.seconds, 3),
            source_onnx_sha256=job.source_sha256,
            source_dtype=job.source.dtype,
            layer_report=f"engines/{set_name}/{job.component}.layers.json",
            compute_layers=compiled.details.summary.compute_layers,
            refittable=refittable,
            weight_map=f"engines/{set_name}/{job.component}.weights.json" if refittable else None,
        )

    def engine_set(self, set_name: str, components: Mapping[str, EngineEntry]) -> EngineSet:
        entries = {name: entry for name, entry in components.items() if isinstance(entry, TrtEngineEntry)}
        return TrtEngineSet(set_name, self.library.backend, self.library.name, self.library.version,
                            self.config.archs, self.config.precision, self.shapes, entries)


def build_engines(request: BuildRequest, on_progress: Callable[[str], None] | None = None) -> TrtOutcome:
    """Build (or find up to date) a TensorRT / TensorRT-RTX engine for every requested component of the package."""
    package = ModelPackage.open(request.package)
    builder = TensorRTBuilder(package, request.config, request.shapes, request.refittable)
    if on_progress is not None:
        config = builder.config
        on_progress(f"{builder.library.name} {builder.library.version}, targets {', '.join(config.archs)}, "
                    f"{config.precision} -> engines/{builder.set_name(package)}")
    return build_engine_set(request.package, builder, request.components, request.force, on_progress)


def engine_key(
    choice: OnnxChoice, onnx_sha256: Sequence[str], profile: ShapeProfile, config: BuildConfig, library: Library,
    refit_map_sha256: str | None = None,
) -> str:
    """Digest of everything the plan depends on: ``onnx_sha256``, the digests of every file of the source ONNX
    (graph and external data, in ``choice.variant.files`` order), so a re-export or conversion that changes any weight
    rebuilds; ``refit_map_sha256``: the digest of the weight map whose weights a refittable plan marks (None: not
    refittable)."""
    inputs = {
        "schema": BUILD_SCHEMA,
        "onnx": choice.variant.onnx,
        "onnx_files": dict(zip(choice.variant.files, onnx_sha256, strict=True)),
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


def choose_onnx(package: ModelPackage, component: str, precision: str, progress: Callable[[str], None]) -> OnnxChoice:
    """Which of the package's ONNX models feeds the builder: the one whose types are the precision asked for (every
    network is strongly typed; see the module docstring)."""
    variants = package.manifest.components[component]
    if precision == "fp32":
        return OnnxChoice(package.variant(component, "fp32"), "fp32 export")
    if package.constants.upcasts(component) and "fp32" in variants:
        # An fp16 VAE with force_upcast overflows to NaN at large sizes; the runtime casts its latents to fp32.
        return OnnxChoice(package.variant(component, "fp32"), "fp32 export (force_upcast)")
    if "fp16" in variants:
        converted = variants["fp16"].verification.get("converted_from")
        return OnnxChoice(variants["fp16"], "fp16 (converted from fp32)" if converted else "fp16 export")
    progress(f"{component}: the package has no fp16 export; converting the fp32 ONNX (export --dtype fp16 is sturdier)")
    return OnnxChoice(convert_to_fp16(package, component), "fp16 (converted from fp32)")


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
    timing_cache: Path | None = None,
    refittable: Sequence[str] | None = None,
) -> tuple[bytes, list[str], tuple[str, ...]]:
    """Parse and build one engine, its precision the ONNX's types (a strongly typed network); returns the serialized
    plan, every message the builder logged, and the names of ``refittable`` (weights to mark refittable; None: a
    plain plan) that the network did not have."""
    api.bind(library)
    trt = api.trt
    logger = api.capturing_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags())
    parser = trt.OnnxParser(network, logger)  # owns the weights the network refers to: kept until the build is done
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineError(f"{library.name} cannot parse {onnx_path.name}: "
                          + "; ".join(errors + api.logged_errors(logger)))
    builder_config = _builder_config(builder, profile, config, library)
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


def strongly_typed_flags() -> int:
    """Network creation flags: strongly typed, so the ONNX's types are the engine's precision and no precision builder
    flag is ever set. TensorRT 10.x and TensorRT-RTX honour the ONNX's types only with STRONGLY_TYPED; TensorRT 11.0
    removed weak typing (``BuilderFlag.FP16``/``INT8`` are gone, every network is strongly typed: "TensorRT 11.0.0
    Release Notes" and the 10.x-to-11.x migration guide), still accepting the flag and ignoring it, so it is set
    wherever the library still has it."""
    flag = getattr(api.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def _builder_config(builder: trt_types.Builder, profile: ShapeProfile, config: BuildConfig,
                    library: Library) -> trt_types.IBuilderConfig:
    trt = api.trt
    builder_config = builder.create_builder_config()
    builder_config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    builder_config.builder_optimization_level = config.optimization_level
    if config.workspace_bytes:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
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


def mark_refittable(network: trt_types.INetworkDefinition, builder_config: trt_types.IBuilderConfig,
                    names: Sequence[str]) -> tuple[str, ...]:
    """Mark exactly ``names`` refittable (REFIT_INDIVIDUAL: every other weight stays a constant the optimiser may
    fold); returns the names the network has no weights for.

    Why these refit flags and no others (TensorRT 11.3.0 release notes, Known Issues, and its "Refitting an Engine"
    page: ``BuilderFlag.REFIT`` may give wrong numbers even when nothing is refitted, a GEMM bias dropped and treated
    as zero, a bias the refit API does not expose; ``REFIT_IDENTICAL`` does not show the issue):
    - ``REFIT`` (every weight refittable) is never set.
    - ``REFIT_INDIVIDUAL`` for LoRA plans: a LoRA changes the weight matrices its weight map lists, never a bias, so
      only those are marked and every bias stays a constant the builder keeps. The refit is checked against ONNX
      Runtime on a GPU (tests/engines/test_trt_refit.py).
    - ``REFIT_IDENTICAL`` is for plans refitted only with the weights they were built with (weight-stripped plans);
      LoRA refits bring other weights, which it leaves undefined ("different weights during refits yield
      unpredictable behavior"), and a plan whose weights never change is built with no refit flag at all.
    - ``SerializationFlag.INCLUDE_REFIT`` (TensorRT 10.14+) keeps a refitted engine refittable when it is serialized
      again; diffship refits deserialized engines in memory only (``engine.refit_engine``, again at every LoRA swap)
      and never serializes a refitted one, so no plan needs it. Whatever comes to write refitted plans back (a
      cache of LoRA-merged plans) must set it, or the plans it writes cannot take the next LoRA.
    """
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
