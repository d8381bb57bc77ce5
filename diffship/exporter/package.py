"""Write a model package: export every component, verify it, and move the finished package into place.

The package is assembled in a hidden staging folder beside ``--out`` and renamed into place only when every file
is written and hashed, so a crash or a failed verification never leaves something a later run would take for a
complete package. A re-run with identical inputs (same weights, dtypes, exporter, opset, library versions) is
skipped unless ``force``.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import onnx
import onnx.checker
import onnx.shape_inference
import torch

from diffship.core.errors import DiffshipError, PackageError
from diffship.core.families import get_family
from diffship.core.files import publish_folder, work_folder
from diffship.core.manifest import DTYPES, MANIFEST_NAME, NUMPY_FLOAT, SCHEMA_VERSION, ComponentVariant, Manifest
from diffship.core.metrics import Verification, random_feeds, verification_dims
from diffship.core.package import ModelPackage, is_package
from diffship.core.progress import ElapsedLog
from diffship.core.specs import ComponentSpec, PipelineConstants, dim_multiples, symbolic_dims
from diffship.engines.onnx.weight_maps import map_weights
from diffship.exporter.families import family_exporter
from diffship.exporter.onnx_export import ExportOptions, export_component, parameter_bytes, streams_weights
from diffship.exporter.sources import SourceModels, SourceOptions, check_source_arguments, load_source
from diffship.exporter.verify import check_onnx, verify_component
from diffship.runtime.timing import peak_rss_bytes

log = logging.getLogger(__name__)

PACKAGE_LAYOUT = 3
"""How the files are laid out; 2: every graph's weights in external data, with weight maps for LoRA; 3: the UNet's
text sequence is symbolic (``text_length``), for long prompts. A package written with an older layout is re-exported,
not taken as up to date."""
BOUNDARY_VERSION = 2
"""How the torch modules are wrapped for export; 2: the UNet up-samples to its skip connections (any multiple of 8
pixels). A package exported with an older one is re-exported, not taken as up to date."""
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
VERSIONED_LIBRARIES = ("torch", "diffusers", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy")


class ExportError(DiffshipError):
    """The export cannot proceed; the message says why and what to do."""


@dataclass(frozen=True)
class ExportRequest:
    out: Path
    model: str | None = None
    model_path: Path | None = None
    random_weights: bool = False
    seed: int = 0
    dtypes: tuple[str, ...] = ("fp32",)
    options: ExportOptions = field(default_factory=ExportOptions)
    force: bool = False
    clip_skip: int = 0
    """Text-encoder layers to skip from the end, as diffusers' ``clip_skip`` (0: its None), built into the graphs."""
    source_options: SourceOptions = field(default_factory=SourceOptions)
    """How a ``model_path`` checkpoint file or variant folder is read (--vae, --variant, --prediction-type ...)."""


@dataclass(frozen=True)
class ComponentReport:
    component: str
    dtype: str
    file_bytes: int
    seconds: dict[str, float]
    verification: Verification


@dataclass(frozen=True)
class ExportResult:
    out: Path
    skipped: bool
    reports: tuple[ComponentReport, ...]
    seconds: float
    peak_rss_bytes: int


def onnx_file_name(dtype: str) -> str:
    return "model.onnx" if dtype == "fp32" else f"model_{dtype}.onnx"


def export_package(request: ExportRequest, on_progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``request``'s model into a verified package at ``request.out`` (see module docstring)."""
    progress = ElapsedLog(log, on_progress)
    _check_request(request)  # before minutes of loading
    check_source_arguments(request.model, request.model_path, request.random_weights, request.source_options)
    _check_destination(Path(request.out))
    progress(f"loading {request.model or request.model_path}{' (random weights)' if request.random_weights else ''}")
    source = load_source(request.model, request.model_path, request.random_weights, request.seed,
                         request.source_options)
    try:
        return export_source(source, request, progress)
    finally:
        source.close()


def export_source(source: SourceModels, request: ExportRequest,
                  on_progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export modules already loaded (``request``'s model and model path are not read) into a verified package at
    ``request.out``: the family's exporter (``exporter.families``) says what each component is."""
    progress = on_progress if isinstance(on_progress, ElapsedLog) else ElapsedLog(log, on_progress)
    out = Path(request.out)
    _check_request(request)
    _check_destination(out)
    _check_clip_skip(source, request.clip_skip)
    progress("hashing weights")
    key, key_inputs = _export_key(source, request)
    if not request.force and _is_up_to_date(out, key):
        progress(f"{out} is up to date (same weights, dtypes, exporter and versions): skipping; --force re-exports")
        return ExportResult(out, True, (), progress.elapsed, peak_rss_bytes())
    with work_folder(out.parent, out.name) as staging:
        reports = _write_package(source, request, staging, key, key_inputs, progress)
        if is_package(out):
            _carry_engines(out, staging, progress)
        publish_folder(staging, out)
    progress(f"package written to {out}")
    return ExportResult(out, False, tuple(reports), progress.elapsed, peak_rss_bytes())


def _check_request(request: ExportRequest) -> None:
    for dtype in request.dtypes:
        if dtype not in DTYPES:
            raise ExportError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if request.options.exporter == "legacy" and "fp16" in request.dtypes:
        # torch's TorchScript exporter types the residual stream of transformers 5's CLIP as float32 around fp16
        # weights, and onnx.checker rejects the LayerNormalization that mixes them; refuse before minutes of work.
        raise ExportError(
            "the legacy exporter writes an invalid fp16 text encoder (float32 and float16 mixed at LayerNormalization); "
            "export fp16 with the dynamo exporter (the default), or use --exporter legacy with --dtype fp32"
        )


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is a file; choose a folder path")
    if out.is_dir() and not is_package(out) and any(out.iterdir()):
        raise ExportError(
            f"--out {out} exists and is not a diffship package (no {MANIFEST_NAME}); "
            "choose a new folder or empty this one"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out, os.W_OK | os.X_OK)):
        raise ExportError(f"--out {out} is not writable (no write permission on {out if out.is_dir() else out.parent})")


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    try:
        versions["diffship"] = metadata.version("diffship")
    except metadata.PackageNotFoundError:
        versions["diffship"] = "source"
    return versions


def _export_key(source: SourceModels, request: ExportRequest) -> tuple[str, dict[str, Any]]:
    inputs = {
        "schema": SCHEMA_VERSION,
        "boundaries": BOUNDARY_VERSION,
        "layout": PACKAGE_LAYOUT,
        "source": source.info,
        "weights_sha256": source.weights_sha256(),
        "dtypes": list(request.dtypes),
        "exporter": request.options.exporter,
        "opset": request.options.opset,
        "components": list(get_family(source.family).components),
        "versions": _library_versions(),
        # Only when set, so that the packages exported before clip_skip existed keep their keys.
        **({"clip_skip": request.clip_skip} if request.clip_skip else {}),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs


def _is_up_to_date(out: Path, key: str) -> bool:
    if not is_package(out):
        return False
    try:
        package = ModelPackage.open(out)
    except PackageError:
        return False
    if package.manifest.export.get("key") != key:
        return False
    # The same check the runtime makes (a file changed in place is hashed again), so "up to date" here and "re-export"
    # there never disagree.
    problems = package.verify_all()
    for problem in problems:
        log.info("not up to date: %s", problem)
    return not problems


def _carry_engines(previous_root: Path, staging: Path, progress: Callable[[str], None]) -> None:
    """Keep the engines of the package being replaced whose source ONNX is byte-identical in the new export (an export
    is deterministic, so ``--force`` with unchanged weights keeps every engine); say which are dropped and why."""
    try:
        previous = ModelPackage.open(previous_root)
    except PackageError:
        return
    staged = ModelPackage.open(staging)
    new = staged.manifest
    kept_sets, carried = {}, []
    for name, engine_set in previous.manifest.engines.items():
        kept = {}
        for component, entry in engine_set.components.items():
            variant = new.components.get(component, {}).get(entry.source_dtype)
            before = previous.manifest.components.get(component, {}).get(entry.source_dtype)
            # The graph file alone says nothing of the weights, which are in its external data: compare every file.
            if variant is not None and before is not None and new.files[variant.onnx].sha256 == \
                    entry.source_onnx_sha256 and [new.files[f].sha256 for f in variant.files] == \
                    [previous.manifest.files[f].sha256 for f in before.files if f in previous.manifest.files]:
                kept[component] = entry
            else:
                progress(f"engines/{name}/{component}: dropped, the ONNX it was built from changed (rebuild it)")
        if not engine_set.components:
            progress(f"engines/{name}: dropped (a backend this diffship does not know)")
        if kept:
            kept_sets[name] = replace(engine_set, components=kept)  # type: ignore[type-var]
            prefixes = tuple(f"engines/{name}/{component}." for component in kept)
            carried += [relative for relative in previous.manifest.files if relative.startswith(prefixes)]
    for relative in carried:
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(previous.path(relative), target)  # published files are never written in place: share them
        except OSError:
            shutil.copy2(previous.path(relative), target)
    if kept_sets:
        progress(f"kept the engines whose ONNX did not change: {', '.join(sorted(kept_sets))}")
    files = {**new.files, **{relative: previous.manifest.files[relative] for relative in carried}}
    staged.write_manifest(replace(new, engines=kept_sets, files=files))


def _write_package(
    source: SourceModels,
    request: ExportRequest,
    staging: Path,
    key: str,
    key_inputs: dict[str, Any],
    progress: Callable[[str], None],
) -> list[ComponentReport]:
    family, wrappers = get_family(source.family), family_exporter(source.family)
    constants = replace(wrappers.derive_constants(source), clip_skip=request.clip_skip)
    specs = family.specs(constants)
    written = [file for encoder in constants.text_encoders
               for file in _copy_tokenizer(source.tokenizers[encoder.component], staging, encoder.tokenizer)]
    (staging / "scheduler").mkdir()
    shutil.copyfile(source.scheduler_config_path, staging / "scheduler" / "scheduler_config.json")
    written.append("scheduler/scheduler_config.json")

    reports: list[ComponentReport] = []
    variants: dict[str, dict[str, ComponentVariant]] = {}
    for component in family.components:
        reference = wrappers.boundary_module(component, source, constants.clip_skip)
        vocab_size = _vocab_size(constants, component)
        feeds = random_feeds(specs[component], _example_dims(constants), np.random.default_rng(0), vocab_size)
        example = tuple(torch.from_numpy(feeds[t.name]) for t in specs[component].inputs)
        for dtype in _component_dtypes(component, constants, request.dtypes):
            boundary = _Boundary(component, dtype, reference, specs[component], example, vocab_size)
            files, seconds, verification = _export_variant(boundary, constants, request.options, staging, progress)
            relative = [str(f.relative_to(staging)) for f in files]
            written += relative
            weight_map = None
            if component in family.adapters:
                weight_map = _write_weight_map(wrappers.adapter_root(component, source), component, dtype, files[0],
                                               relative[0], progress)
                written.append(weight_map)
            variants.setdefault(component, {})[dtype] = ComponentVariant(
                component=component, dtype=dtype, onnx=relative[0], files=tuple(relative),
                spec=specs[component].with_float_dtype(NUMPY_FLOAT[dtype]), verification=verification.to_json(),
                weight_map=weight_map)
            reports.append(ComponentReport(component, dtype, sum(f.stat().st_size for f in files), seconds,
                                           verification))
        del reference
        _release_finished(source, component, family.components)

    manifest = Manifest(
        family=source.family,
        source={**source.info, "weights_sha256": source.weights_sha256()},
        constants=constants,
        export={
            "key": key,
            "dtypes": list(request.dtypes),
            "exporter": request.options.exporter,
            "opset": request.options.opset,
            "versions": key_inputs["versions"],
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        components=variants,
        files={},
    ).with_files(staging, written)
    ModelPackage(staging, manifest).write_manifest(manifest)
    return reports


@dataclass(frozen=True)
class _Boundary:
    """One component in one dtype, to export: its torch module (fp32; halved here for fp16), its fp32 contract, an
    example input for the tracer, and the vocabulary its random verification ids are drawn from."""

    component: str
    dtype: str
    reference: torch.nn.Module
    spec: ComponentSpec
    example: tuple[torch.Tensor, ...]
    vocab_size: int


def _export_variant(boundary: _Boundary, constants: PipelineConstants, options: ExportOptions, staging: Path,
                    progress: Callable[[str], None]) -> tuple[list[Path], dict[str, float], Verification]:
    """Export one component in one dtype, check it with onnx.checker and verify it against torch in ONNX Runtime;
    the files written, the seconds each stage took, and the verification (an ExportError when it misses the bar)."""
    label, dtype = f"{boundary.component} {boundary.dtype}", boundary.dtype
    spec = boundary.spec.with_float_dtype(NUMPY_FLOAT[dtype])
    module = boundary.reference if dtype == "fp32" else _half_copy(boundary.reference)
    example = tuple(x.half() if dtype == "fp16" and x.is_floating_point() and t.name != "timestep" else x
                    for t, x in zip(spec.inputs, boundary.example, strict=True))
    seconds: dict[str, float] = {}
    options = replace(options, stream_weights=streams_weights(module, options))
    how = "weights streamed, legacy tracer" if options.stream_weights else f"{options.exporter} exporter"
    progress(f"{label}: exporting ({how}, opset {options.opset})")
    tick = time.perf_counter()
    files = export_component(module, spec, example, staging / "onnx" / boundary.component, options,
                             dim_multiples(constants), file_name=onnx_file_name(dtype))
    seconds["export"] = time.perf_counter() - tick
    del module  # an fp16 copy goes before ONNX Runtime loads the graph; the fp32 reference stays
    size = sum(f.stat().st_size for f in files)
    progress(f"{label}: exported {_megabytes(size)} in {seconds['export']:.1f}s; running onnx.checker")
    tick = time.perf_counter()
    try:
        check_onnx(files[0])
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{label}: onnx.checker rejected the exported graph: {exc}") from None
    seconds["check"] = time.perf_counter() - tick
    progress(f"{label}: checker passed in {seconds['check']:.1f}s; verifying against torch in ONNX Runtime")
    tick = time.perf_counter()
    verification = verify_component(files[0], boundary.reference, boundary.spec, dtype, verification_dims(constants),
                                     boundary.vocab_size)
    seconds["verify"] = time.perf_counter() - tick
    progress(f"{label}: {'verified' if verification.passed else 'FAILED'}: {verification.describe()}")
    if not verification.passed:
        raise ExportError(f"{label} misses the parity bar ({verification.bar}): " + "; ".join(verification.failures))
    return files, seconds, verification


def _vocab_size(constants: PipelineConstants, component: str) -> int:
    """The token ids ``component``'s random verification inputs take (``PipelineConstants.vocabulary_of``)."""
    encoder = constants.text_encoder(constants.vocabulary_of(component))
    if encoder.vocab_size is None:
        raise ExportError(f"{encoder.component}: the family's derive_constants recorded no vocab_size")
    return encoder.vocab_size


def _check_clip_skip(source: SourceModels, clip_skip: int) -> None:
    """``clip_skip`` must leave at least one transformer layer of every text encoder to read."""
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip < 0:
        raise ExportError(f"clip_skip must be a whole number >= 0 (0: the model's default layer), got {clip_skip!r:.40}")
    most = family_exporter(source.family).max_clip_skip(source)
    if clip_skip > most:
        layers = min(int(e.config.num_hidden_layers) for e in source.text_encoders.values())
        raise ExportError(f"clip_skip {clip_skip} leaves no layer of this model's {layers}-layer text encoder to read; "
                          f"give 0 to {most}")


def _half_copy(module: torch.nn.Module) -> torch.nn.Module:
    """``copy.deepcopy(module).half()`` without the fp32 duplicate in between: each floating parameter and buffer is
    halved straight from the original (full-size SDXL's fp32 UNet and a second fp32 copy would not fit in 24 GB)."""
    memo: dict[int, Any] = {}
    for tensor in (*module.parameters(), *module.buffers()):  # tied tensors appear once, and stay tied
        if tensor.is_floating_point():
            half = tensor.detach().half()
            memo[id(tensor)] = torch.nn.Parameter(half, tensor.requires_grad) if isinstance(tensor, torch.nn.Parameter) \
                else half
    return copy.deepcopy(module, memo)


SOURCE_MODULES = {"text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2", "unet": "unet",
                  "vae_decoder": "vae", "vae_encoder": "vae"}
"""The source module each component is exported from (``SourceModels.release`` names)."""


def _release_finished(source: SourceModels, component: str, order: tuple[str, ...]) -> None:
    """Let go of a source module no later component needs (a full-size SDXL export cannot hold every model and the
    ONNX Runtime session that verifies the UNet at once). Its weights digest was taken before the export began."""
    attribute = SOURCE_MODULES.get(component)
    later = order[order.index(component) + 1:]
    if attribute is None or any(SOURCE_MODULES.get(c) == attribute for c in later):
        return
    module = source.release(attribute)
    large = module is not None and parameter_bytes(module) > 2**30
    del module
    if large:  # a cycle could keep gigabytes alive until the collector happens to run; small modules are not worth it
        gc.collect()


def _write_weight_map(
    root: torch.nn.Module, component: str, dtype: str, graph: Path, graph_relative: str, progress: Callable[[str], None]
) -> str:
    """Find every linear and convolution weight of ``root`` in the exported graph; write the map beside the graph."""
    torch_dtype = torch.float32 if dtype == "fp32" else torch.float16
    weights = {name: module.weight.detach().to(torch_dtype).numpy() for name, module in root.named_modules()
               if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    weight_map = map_weights(graph, graph_relative, component, weights)
    progress(f"{component} {dtype}: {len(weight_map.slots)} of {len(weights)} weights mapped for LoRA"
             + (f" ({len(weight_map.unmapped)} not: {next(iter(weight_map.unmapped.values()))})"
                if weight_map.unmapped else ""))
    path = graph.with_name(graph.name.removesuffix(".onnx") + ".weights.json")
    path.write_text(json.dumps(weight_map.to_json(), indent=1) + "\n", encoding="utf-8")
    return str(PurePosixPath(graph_relative).with_name(path.name))


def _component_dtypes(component: str, constants: PipelineConstants, dtypes: tuple[str, ...]) -> tuple[str, ...]:
    """The requested dtypes, and fp32 too for a VAE that overflows in fp16 (``force_upcast``): the runtime decodes
    with it inside fp16 pipelines, as diffusers upcasts it."""
    if constants.force_upcast and component in ("vae_decoder", "vae_encoder") and "fp32" not in dtypes:
        return (*dtypes, "fp32")
    return dtypes


def _example_dims(constants: PipelineConstants) -> dict[str, int]:
    # Batch 2 (the dynamo exporter specialises batch 1 in the VAE) and odd latent sizes (9 x 13), so no symbolic
    # dimension is traced at the special values 0 or 1, nor at a size the UNet's down-sampling divides.
    factor = constants.vae_scale_factor
    return symbolic_dims(2, 9 * factor, 13 * factor, factor, 2 * constants.text_max_length)


def _copy_tokenizer(source_dir: Path, staging: Path, folder: str) -> list[str]:
    """The source's tokenizer files verbatim into ``staging/folder``; vocab.json/merges.txt derived from tokenizer.json
    when absent."""
    dest = staging / folder
    dest.mkdir(parents=True)
    written = []
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copyfile(source_dir / name, dest / name)
            written.append(f"{folder}/{name}")
    if not (dest / "vocab.json").is_file() or not (dest / "merges.txt").is_file():
        tokenizer_json = source_dir / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ExportError(f"{source_dir} has neither vocab.json/merges.txt nor tokenizer.json")
        model = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (dest / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
        (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        written += [f"{folder}/vocab.json", f"{folder}/merges.txt"]
    if not (dest / "tokenizer_config.json").is_file():
        raise ExportError(f"{source_dir} has no tokenizer_config.json")
    return sorted(set(written))


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
