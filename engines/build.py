"""``build-trt``: fp16 ONNX when needed, graph sanitising, one builder for TensorRT and TensorRT-RTX, an engine cache,
and a per-layer precision report captured from the builder itself (proof of precision without a GPU).

Precision routes (DESIGN.md section 7):
- TensorRT-RTX networks are strongly typed, so fp16 engines come from fp16 ONNX: the package's ``--dtype fp16``
  export when present, else the fp32 export converted here (ONNX Runtime's float16 converter, de-duplicated and
  re-sorted, then checked against fp32 in ONNX Runtime before use; half-precision export is the sturdier route).
- Full TensorRT takes the fp16 export strongly typed when present, else the fp32 export with the FP16 builder flag
  (TensorRT then keeps in fp32 whatever it judges fragile).
Engines land in ``engines/<backend>-<archs>-<precision>/<component>.plan`` with a ``<component>.layers.json``
report; each finished component is recorded in the manifest at once, so an interrupted build never leaves a
listed engine half-written, and a rebuild with the same key (ONNX digest, profile, precision, archs, library
version, builder settings) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from engines import tensorrt_api as api
from engines.errors import EngineError
from engines.metrics import compare, judge, random_feeds
from engines.package import ComponentVariant, EngineEntry, EngineSet, FileEntry, ModelPackage, current_umask
from engines.profiles import shape_profiles
from engines.progress import ElapsedLog
from engines.specs import BuildConfig, ShapeProfile, ShapeRequest, symbolic_dims
from engines.tensorrt_api import RTX_ARCHS, Library, load_library, local_gpu_arch, normalize_arch

log = logging.getLogger(__name__)

BUILD_SCHEMA = 1
TXT2IMG_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
PROTOBUF_LIMIT = 2**31 - 1
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
    components: tuple[str, ...] = TXT2IMG_COMPONENTS
    force: bool = False


@dataclass(frozen=True)
class ComponentBuild:
    component: str
    skipped: bool
    route: str
    """Which ONNX the engine came from (fp16 export, converted fp32, fp32 with the FP16 flag, fp32)."""
    seconds: float
    plan_bytes: int
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    engine_set: str
    folder: Path
    library: Library
    archs: tuple[str, ...]
    builds: tuple[ComponentBuild, ...]
    seconds: float


@dataclass(frozen=True)
class OnnxChoice:
    variant: ComponentVariant
    strongly_typed: bool
    fp16_flag: bool
    route: str


# ---------------------------------------------------------------------------------------------- orchestration


def _refuse_full_tensorrt_without_gpu() -> NoReturn:
    raise EngineError(
        "full TensorRT builds engines for the GPU it runs on and needs one (none found); for ahead-of-time builds "
        "without a GPU use --backend trt-rtx --arch sm86,sm89,... (TensorRT-RTX)"
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


def build_engines(request: BuildRequest, on_progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or find up to date) an engine for every requested component of the package."""
    progress = ElapsedLog(log, on_progress)

    config = request.config
    if config.precision not in ("fp16", "fp32"):
        raise EngineError(f"precision {config.precision!r} is not supported; choose fp16 or fp32")
    package = ModelPackage.open(request.package)
    unknown = [c for c in request.components if c not in package.manifest.components]
    if unknown:
        raise EngineError(f"package has no {', '.join(unknown)}; components: {', '.join(package.manifest.components)}")
    if config.backend == "trt" and local_gpu_arch() is None:
        _refuse_full_tensorrt_without_gpu()
    library = load_library(config.backend)
    archs = resolve_archs(library, config.archs)
    config = replace(config, archs=archs)
    name = engine_set_name(library.backend, archs, config.precision)
    folder = package.path(f"engines/{name}")
    specs = {c: package.variant(c, "fp32" if "fp32" in package.manifest.components[c] else "fp16").spec
             for c in request.components}
    profiles = shape_profiles(request.shapes, package.constants, specs)
    progress(f"{library.name} {library.version}, targets {', '.join(archs)}, {config.precision} -> engines/{name}")

    builds = []
    for component in request.components:
        package = ModelPackage.open(request.package)  # earlier components may have changed the manifest
        choice = choose_onnx(package, component, config.precision, library, progress)
        package = ModelPackage.open(request.package)
        key = engine_key(choice, profiles[component], config, library)
        existing = package.manifest.engines.get(name)
        entry = existing.components.get(component) if existing else None
        if not request.force and entry is not None and entry.key == key and _plan_present(package, entry):
            progress(f"{component}: up to date ({entry.plan}); --force rebuilds")
            builds.append(
                ComponentBuild(component, True, choice.route, 0.0, package.path(entry.plan).stat().st_size,
                               _read_summary(package, entry))
            )
            continue
        builds.append(
            _build_component(package, component, choice, profiles[component], config, library, name, key, request, progress)
        )
    return BuildResult(name, folder, library, archs, tuple(builds), progress.elapsed)


def _build_component(
    package: ModelPackage,
    component: str,
    choice: OnnxChoice,
    profile: ShapeProfile,
    config: BuildConfig,
    library: Library,
    set_name: str,
    key: str,
    request: BuildRequest,
    progress: Callable[[str], None],
) -> ComponentBuild:
    engines_dir = package.path("engines")
    engines_dir.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{component}-", dir=engines_dir))
    try:
        progress(f"{component}: sanitising {choice.variant.onnx} (constant folding, clean-up, topological sort)")
        sanitized = sanitize_onnx(package.path(choice.variant.onnx), work / "model.onnx")
        progress(f"{component}: building from {choice.route} (optimisation level {config.optimization_level})")
        tick = time.perf_counter()
        plan, messages = build_plan(sanitized, profile, config, library, choice, _timing_cache_path(package, library))
        seconds = time.perf_counter() - tick
        layers = parse_layer_report(messages)
        summary = summarize_layers(layers)
        progress(f"{component}: built {len(plan) / 1e6:.1f} MB in {seconds:.1f}s; {describe_summary(summary)}")
        folder = package.path(f"engines/{set_name}")
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o777 & ~current_umask())
        plan_rel = f"engines/{set_name}/{component}.plan"
        report_rel = f"engines/{set_name}/{component}.layers.json"
        (work / "plan").write_bytes(plan)
        report = {"library": library.name, "version": library.version, "archs": list(config.archs),
                  "precision": config.precision, "route": choice.route, "summary": summary, "layers": layers}
        (work / "report").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        for temporary in (work / "plan", work / "report"):
            os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(work / "plan", package.path(plan_rel))
        os.replace(work / "report", package.path(report_rel))
        _record(package, set_name, library, config, request.shapes, EngineEntry(
            component=component,
            plan=plan_rel,
            profile=profile,
            key=key,
            build_seconds=round(seconds, 3),
            onnx_sha256=package.manifest.files[choice.variant.onnx].sha256,
            onnx_dtype=choice.variant.dtype,
            precision_summary=report_rel,
            layer_precisions=summary["compute_layers"],
        ))
        return ComponentBuild(component, False, choice.route, seconds, len(plan), summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record(
    package: ModelPackage,
    set_name: str,
    library: Library,
    config: BuildConfig,
    shapes: ShapeRequest,
    entry: EngineEntry,
) -> None:
    """Add one finished engine to the manifest (re-read first: the manifest is the single source of truth)."""
    current = ModelPackage.open(package.root)
    manifest = current.manifest
    existing = manifest.engines.get(set_name)
    components = dict(existing.components) if existing else {}
    components[entry.component] = entry
    engine_set = EngineSet(
        name=set_name,
        backend=library.backend,
        library=library.name,
        library_version=library.version,
        archs=tuple(config.archs),
        precision=config.precision,
        request=shapes,
        components=components,
    )
    files = dict(manifest.files)
    for relative in (entry.plan, entry.precision_summary):
        if relative:
            files[relative] = FileEntry.of(current.path(relative))
    current.write_manifest(replace(manifest, engines={**manifest.engines, set_name: engine_set}, files=files))


def _plan_present(package: ModelPackage, entry: EngineEntry) -> bool:
    listed = package.manifest.files.get(entry.plan)
    path = package.path(entry.plan)
    return listed is not None and path.is_file() and path.stat().st_size == listed.bytes


def _read_summary(package: ModelPackage, entry: EngineEntry) -> dict[str, Any]:
    if entry.precision_summary and package.path(entry.precision_summary).is_file():
        summary = json.loads(package.path(entry.precision_summary).read_text(encoding="utf-8"))["summary"]
        return dict(summary)
    return {}


def engine_key(choice: OnnxChoice, profile: ShapeProfile, config: BuildConfig, library: Library) -> str:
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


def convert_to_fp16(package: ModelPackage, component: str, seed: int = 0) -> ComponentVariant:
    """fp32 ONNX -> fp16 ONNX (timestep stays float32), verified against fp32 in ONNX Runtime, added to the package."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    source = package.variant(component, "fp32")
    for relative in source.files:
        package.verify_file(relative)
    model = onnx.load(str(package.path(source.onnx)))
    keep = [t.name for t in source.spec.inputs if t.name == "timestep"]
    converted = convert_float_to_float16(
        model, keep_io_types=keep or False, disable_shape_infer=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP32_KEPT_OPS
    )
    converted = _deduplicate_and_sort(converted)
    relative = source.onnx.replace("model.onnx", "model_fp16.onnx")
    folder = package.path(relative).parent
    with tempfile.TemporaryDirectory(prefix=".fp16-", dir=folder) as scratch:
        staged = save_onnx(converted, Path(scratch) / "model_fp16.onnx")
        verification = verify_onnx_pair(package, component, package.path(source.onnx), staged[0], seed)
        if not verification["passed"]:
            raise EngineError(
                f"{component}: the fp32 -> fp16 conversion misses the fp16 bar ({'; '.join(verification['failures'])}); "
                "re-export the package with --dtype fp32,fp16 (half-precision export is the sturdier route)"
            )
        written = []
        for path in staged:
            target = folder / path.name
            os.chmod(path, 0o666 & ~current_umask())
            os.replace(path, target)
            written.append(str(target.relative_to(package.root)))
    variant = ComponentVariant(
        component=component,
        dtype="fp16",
        onnx=written[0],
        files=tuple(written),
        spec=source.spec.with_float_dtype("float16"),
        verification=verification,
    )
    manifest = package.manifest.with_files(package.root, written)
    components = {**manifest.components, component: {**manifest.components[component], "fp16": variant}}
    package.write_manifest(replace(manifest, components=components))
    return variant


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


def verify_onnx_pair(package: ModelPackage, component: str, fp32_path: Path, fp16_path: Path, seed: int) -> dict[str, Any]:
    """fp16 ONNX vs fp32 ONNX, both in ONNX Runtime (CPU), at two shapes; the fp16 bars of DESIGN.md section 5."""
    import onnxruntime as ort

    spec = package.variant(component, "fp32").spec
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32_path, fp16_path)]
    types = {i.name: np.float16 if i.type == "tensor(float16)" else None for i in sessions[1].get_inputs()}
    vocab = len(json.loads(package.path("tokenizer/vocab.json").read_text(encoding="utf-8")))
    constants = package.constants
    rng = np.random.default_rng(seed)
    cases, failures = [], []
    for batch, scale_h, scale_w in ((1, 1, 1), (2, 2, 3)):
        dims = symbolic_dims(batch, scale_h * constants.spatial_multiple, scale_w * constants.spatial_multiple,
                             constants.vae_scale_factor)
        feeds = random_feeds(spec, dims, rng, vocab)
        reference = sessions[0].run(None, feeds)
        half = {k: v.astype(types[k]) if types.get(k) is not None else v for k, v in feeds.items()}
        actual = sessions[1].run(None, half)
        figures = [compare(component, t.name, a.astype(np.float32), r)
                   for t, a, r in zip(spec.outputs, actual, reference, strict=True)]
        failures += [reason for f in figures if (reason := judge(component, "fp16", f))]
        cases.append({"dims": dims, "outputs": [f.__dict__ | {"shape": list(f.shape)} for f in figures]})
    return {"passed": not failures, "failures": failures, "converted_from": "fp32",
            "method": "onnxruntime.transformers.float16 (timestep kept float32), checked against fp32 ONNX in ONNX Runtime",
            "cases": cases}


def save_onnx(model: Any, path: Path) -> list[Path]:
    """Save ``model``; with one external-data file when its weights approach protobuf's 2 GB limit."""
    import onnx

    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights + (1 << 20) >= PROTOBUF_LIMIT:
        data = path.with_name(path.name + ".data")
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(model, str(path))
    return [path]


def sanitize_onnx(source: Path, dest: Path) -> Path:
    """Constant folding, dead-node removal and a topological sort (onnx-graphsurgeon) before parsing."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(source)))
    graph.fold_constants().cleanup().toposort()
    save_onnx(gs.export_onnx(graph), dest)
    return dest


# ---------------------------------------------------------------------------------------------- the builder


def _timing_cache_path(package: ModelPackage, library: Library) -> Path:
    return package.path(f"engines/timing-cache/{library.name}-{library.version}.cache")


def _make_logger() -> Any:
    """A TensorRT logger that keeps every message: the per-layer report and the errors come from it."""

    class CapturingLogger(api.trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            api.trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, msg))

    return CapturingLogger()


def _errors(logger: Any) -> list[str]:
    trt = api.trt
    bad = {trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR}
    return [message for severity, message in logger.messages if severity in bad]


def build_plan(
    onnx_path: Path,
    profile: ShapeProfile,
    config: BuildConfig,
    library: Library,
    choice: OnnxChoice,
    timing_cache: Path | None = None,
) -> tuple[bytes, list[str]]:
    """Parse and build one engine; returns the serialized plan and every message the builder logged."""
    api.bind(library)
    trt = api.trt
    logger = _make_logger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if choice.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineError(f"{library.name} cannot parse {onnx_path.name}: " + "; ".join(errors + _errors(logger)))
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
    cache = _load_timing_cache(builder_config, timing_cache)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineError(
            f"{library.name} failed to build {onnx_path.name}: " + " | ".join(_errors(logger) or ["no error message"])
        )
    if cache is not None and timing_cache is not None:
        _save_timing_cache(builder_config, timing_cache)
    return bytes(memoryview(serialized)), [message for _, message in logger.messages]


def _load_timing_cache(builder_config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = builder_config.create_timing_cache(data)
    builder_config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def _save_timing_cache(builder_config: Any, path: Path) -> None:
    data = bytes(memoryview(builder_config.get_timing_cache().serialize()))
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


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
