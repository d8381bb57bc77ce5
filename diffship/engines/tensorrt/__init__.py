"""The TensorRT backend: full TensorRT and TensorRT-RTX (their differences are data: ``api.Library``).

Run time: ``TensorRTBackend`` picks a ``trt``/``trt-rtx`` engine set built for this GPU with an installed library (sets
for other shapes are named in a warning) and opens ``TrtEngine``\\ s on one shared ``Device`` (runtime, stream,
activation pool); it takes ``TrtOptions`` and refuses settings that are not for the GPU. Build time
(``engines.tensorrt.build``, imported only by ``build-trt``): the builder, precision routes, the per-layer precision
report, refittable plans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from diffship.core.errors import PackageError, command
from diffship.core.manifest import TrtEngineEntry, TrtEngineSet
from diffship.core.package import ModelPackage
from diffship.engines.backend import BackendOptions, OpenRequest, OpenSettings, Selection, own_options, refuse_settings
from diffship.engines.base import EngineBase
from diffship.engines.errors import EngineError, MissingLibraryError
from diffship.engines.tensorrt.api import load_library, local_gpu_arch
from diffship.engines.tensorrt.sets import default_shape_request, describe_shapes, shapes_rank

__all__ = ["TensorRTBackend", "TrtOptions", "choose_engine_set"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrtOptions(BackendOptions):
    """The ``trt`` backend's options (``OpenRequest.options``): what TensorRT engines take at open."""

    cuda_graphs: bool = False
    """Capture each engine's run into a CUDA graph on its first call and replay it (static engines only)."""


def choose_engine_set(package: ModelPackage, name: str | None, precision: str | None) -> TrtEngineSet:
    """The TensorRT engine set to run: the one named, else one built for this GPU with an installed library (full
    TensorRT before TensorRT-RTX, fp16 before fp32, then by shapes: ``sets.shapes_rank``)."""
    sets: dict[str, TrtEngineSet] = {
        key: s for key, s in package.manifest.engines.items() if isinstance(s, TrtEngineSet)
    }
    if name is not None:
        if name not in sets:
            raise EngineError(
                f"no TensorRT engine set {name!r} in {package.root}; it has {', '.join(sets) or 'none'}"
                + (" (ONNX Runtime sets run with --backend ort)" if name in package.manifest.engines else "")
            )
        return sets[name]
    if not sets:
        raise EngineError(
            f"package {package.root} has no TensorRT engines; build them with "
            f"`{command(f'build-trt --package {package.root} --fp16')}`"
        )
    arch = local_gpu_arch()
    if arch is None:
        raise EngineError("TensorRT engines run on an NVIDIA GPU and none was found; use --backend ort")
    default = default_shape_request(package.constants)
    candidates = [s for s in sets.values() if arch in s.archs and (precision is None or s.precision == precision)]
    candidates.sort(key=lambda s: (s.backend != "trt", s.precision != "fp16", *shapes_rank(s.request, default), s.name))
    for engine_set in candidates:
        try:
            load_library(engine_set.backend)
        except MissingLibraryError:
            continue
        _say_alternatives(engine_set, candidates)
        return engine_set
    built = ", ".join(f"{s.name} ({s.library} {s.library_version})" for s in sets.values())
    raise EngineError(
        f"no engine set here runs on this GPU ({arch}) with an installed TensorRT library; built: {built}. "
        f"Build one with `{command(f'build-trt --package {package.root} --fp16')}`"
    )


def _say_alternatives(chosen: TrtEngineSet, candidates: Sequence[TrtEngineSet]) -> None:
    """Sets of the chosen one's library and precision that differ only in shapes: which was taken, and the others."""
    others = [s for s in candidates if s is not chosen and (s.backend, s.precision) == (chosen.backend, chosen.precision)]
    if others:
        log.warning("running engines/%s (%s); also built for other shapes: %s (name one with --engines)", chosen.name,
                    describe_shapes(chosen.request),
                    "; ".join(f"{s.name} ({describe_shapes(s.request)})" for s in others))


class TensorRTBackend:
    name = "trt"

    def options(self, settings: OpenSettings) -> TrtOptions:
        """TensorRT engines run on the NVIDIA GPU and take no thread count: ``device`` ``auto``/``cuda`` and
        ``cuda_graphs`` only; anything else is refused, never ignored."""
        given = own_options(self.name, TrtOptions, settings.options)
        refuse_settings(self.name, settings, ("auto", "cuda"),
                        "TensorRT engines run on the NVIDIA GPU; for the CPU or thread counts use --backend ort",
                        cuda_graphs=True)
        return replace(given, cuda_graphs=given.cuda_graphs or settings.cuda_graphs) if given is not None \
            else TrtOptions(cuda_graphs=settings.cuda_graphs)

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        chosen = choose_engine_set(package, request.engine_set, request.precision)
        return Selection(self.name, chosen.precision, chosen)

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        from diffship.engines.tensorrt.engine import Device, TrtEngine, activation_bytes

        chosen = selection.engine_set
        assert isinstance(chosen, TrtEngineSet)
        library = load_library(chosen.backend)
        if library.version != chosen.library_version:
            raise EngineError(
                f"engines in engines/{chosen.name} were built with {chosen.library} {chosen.library_version}; this "
                f"machine has {library.version}, which cannot load them: rebuild with build-trt"
            )
        options = own_options(self.name, TrtOptions, request.options) or TrtOptions()
        entries = _entries(package, chosen, components, request)
        device = Device(library)
        deserialized = {}
        try:
            for component, entry in entries.items():
                try:
                    plan = package.verify_file(entry.plan).read_bytes()
                except PackageError as exc:
                    raise EngineError(str(exc)) from None
                log.debug("loading %s from %s", component, entry.plan)
                deserialized[component] = device.deserialize(plan, f"{chosen.name}/{component}")
            # Components run one after another: one activation pool, sized for the hungriest, serves them all.
            device.reserve(max(activation_bytes(engine) for engine in deserialized.values()))
            engines = {
                component: TrtEngine(engine, package.variant(component, entries[component].source_dtype).spec,
                                     entries[component].profile, device, f"{chosen.name}/{component}",
                                     options.cuda_graphs)
                for component, engine in deserialized.items()
            }
        except BaseException:
            device.close()
            raise
        try:
            for component, engine in engines.items():
                engine.refit(request.weights.get(component) or {})
        except BaseException:
            for engine in engines.values():
                engine.close()  # the last one closes the device
            raise
        return dict(engines)


def _entries(
    package: ModelPackage, chosen: TrtEngineSet, components: Sequence[str], request: OpenRequest
) -> dict[str, TrtEngineEntry]:
    """The set's entry for each component; checked before any GPU work, as refusals should be."""
    entries = {}
    for component in components:
        entry = chosen.components.get(component)
        if entry is None:
            raise EngineError(f"engine set {chosen.name} has no {component}; rebuild with build-trt")
        if request.weights.get(component) and not entry.refittable:
            raise EngineError(
                f"engines/{chosen.name}/{component} was built without --refittable and cannot take new weights (a "
                f"LoRA); rebuild with `{command(f'build-trt --package {package.root} ... --refittable')}` (the same "
                "options plus --refittable), or run with --backend ort"
            )
        entries[component] = entry
    return entries
