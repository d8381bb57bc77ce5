"""The ONNX Runtime backend: the CPU provider, or the CUDA provider with onnxruntime-gpu.

Run time: ``OrtBackend`` picks the package's ``build-ort`` engine set for where the sessions will run (this CPU
family, or ``cuda``) when one was built with this onnxruntime, else the exported ONNX, and opens ``OrtEngine``\\ s.
Build time (``engines.ort.build``, imported only by ``build-ort``): attention fusion and the CPU optimisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from diffship.core.errors import command
from diffship.core.manifest import OrtEngineSet
from diffship.core.package import ModelPackage
from diffship.engines.backend import OpenRequest, OpenSettings, Selection, own_options
from diffship.engines.base import EngineBase
from diffship.engines.errors import EngineError
from diffship.engines.onnx.session import cuda_available, import_onnxruntime
from diffship.engines.ort.engine import OrtEngine, OrtOptions
from diffship.engines.ort.targets import cpu_tag, ort_engine_set_name

__all__ = ["OrtBackend", "OrtEngine", "OrtOptions", "cpu_tag", "cuda_available", "import_onnxruntime"]

log = logging.getLogger(__name__)


def component_dtype(package: ModelPackage, component: str, precision: str) -> str:
    """Which export of ``component`` runs at ``precision``: an int8 set quantizes the fp32 export (its specs, float32
    I/O, are the fp32 variant's); a VAE whose config sets ``force_upcast`` (SDXL's overflows in fp16) runs its fp32
    export inside an fp16 pipeline, as diffusers upcasts it, when the package has one."""
    if precision == "int8":
        return "fp32"
    upcast = package.constants.upcasts(component) and "fp32" in package.manifest.components.get(component, {})
    if precision == "fp16" and upcast:
        return "fp32"
    return precision


def default_precision(package: ModelPackage) -> str:
    """fp32 when every component was exported in it, else fp16."""
    dtypes = package.dtypes()
    if not dtypes:
        raise EngineError(f"package {package.root} has no complete export (every component in one precision)")
    return dtypes[0]


class OrtBackend:
    name = "ort"

    def options(self, settings: OpenSettings) -> OrtOptions:
        """Every generic setting applies (``OrtOptions`` checks the values); an ``OrtOptions`` given whole overrides
        ``device`` and ``threads``, and ``cuda_graphs`` adds to its own."""
        given = own_options(self.name, OrtOptions, settings.options)
        if given is not None:
            return replace(given, cuda_graph=given.cuda_graph or settings.cuda_graphs)
        return OrtOptions(device=settings.device, threads=settings.threads, cuda_graph=settings.cuda_graphs)

    def _options(self, request: OpenRequest) -> OrtOptions:
        return own_options(self.name, OrtOptions, request.options) or self.options(OpenSettings())

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        options = self._options(request)
        precision = request.precision or default_precision(package)
        sets = package.manifest.engines
        if request.engine_set is not None:
            chosen = sets.get(request.engine_set)
            if not isinstance(chosen, OrtEngineSet):
                ort_sets = [name for name, s in sets.items() if isinstance(s, OrtEngineSet)]
                raise EngineError(
                    f"{request.engine_set!r} is not an ONNX Runtime engine set of {package.root} "
                    f"(it has {', '.join(ort_sets) or 'none'}; TensorRT sets run with --backend trt)"
                )
            return Selection(self.name, chosen.precision, chosen)
        on_cuda = options.device == "cuda" or (options.device == "auto" and cuda_available())
        if precision == "int8":
            return self._select_int8(package, sets.get(ort_engine_set_name("int8", "cpu")), options, on_cuda)
        if not options.prebuilt:
            return Selection(self.name, precision)
        found = sets.get(ort_engine_set_name(precision, "cuda" if on_cuda else "cpu"))
        if not isinstance(found, OrtEngineSet):
            return Selection(self.name, precision)
        installed = import_onnxruntime().__version__
        if found.library_version != installed:
            log.warning("ignoring engines/%s: built with onnxruntime %s, this is %s (run build-ort again)",
                        found.name, found.library_version, installed)
            return Selection(self.name, precision)
        return Selection(self.name, precision, found)

    def _select_int8(self, package: ModelPackage, found: object, options: OrtOptions, on_cuda: bool) -> Selection:
        """int8 runs only from a ``build-ort --precision int8`` set, and only when asked for: never a default."""
        if on_cuda:
            raise EngineError("int8 engines run on ONNX Runtime's CPU provider; on a GPU use --precision fp16")
        if not isinstance(found, OrtEngineSet):
            raise EngineError(f"{package.root} has no int8 engines for this CPU ({ort_engine_set_name('int8', 'cpu')}); "
                              f"build them with `{command(f'build-ort --package {package.root} --precision int8')}`")
        installed = import_onnxruntime().__version__
        if found.library_version != installed:
            raise EngineError(f"engines/{found.name} was built with onnxruntime {found.library_version}, this is "
                              f"{installed}: run build-ort --precision int8 again")
        if not options.prebuilt:
            raise EngineError("int8 has no exported ONNX to fall back to: it needs its build-ort engines (prebuilt)")
        return Selection(self.name, "int8", found)

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        options = self._options(request)
        engine_set = selection.engine_set
        engines: dict[str, EngineBase] = {}
        try:
            for component in components:
                dtype = component_dtype(package, component, selection.precision)
                variant = package.variant(component, dtype)
                entry = engine_set.components.get(component) if isinstance(engine_set, OrtEngineSet) else None
                if dtype != selection.precision and selection.precision != "int8":
                    entry = None  # the set's graph is the other precision's: run the export itself
                if entry is None:
                    files, path, component_options = variant.files, package.path(variant.onnx), options
                elif isinstance(engine_set, OrtEngineSet) and engine_set.target == "cuda":
                    # Attention fused only; the CUDA provider optimises the rest of the graph when the session opens.
                    files, path, component_options = entry.files, package.path(entry.graph), options
                else:
                    # Optimised once already; without prepacking the weights stay memory-mapped and a session opens
                    # in a fraction of a second (measured: same step time, see BENCHMARKS.md). Not for int8: its
                    # integer kernels repack unpacked weights on every call (sd15 UNet, 32x32: 2.3 s vs 1.3 s a step).
                    prepack = {} if selection.precision == "int8" else {"session.disable_prepacking": "1"}
                    config = {**prepack, **options.session_config}
                    files, path = entry.files, package.path(entry.graph)
                    component_options = replace(options, graph_optimization="disable", session_config=config)
                for relative in files:
                    package.verify_file(relative)
                log.debug("loading %s (%s) from %s into ONNX Runtime", component, selection.precision, path)
                engines[component] = OrtEngine(path, variant.spec, component_options,
                                               request.weights.get(component))
        except BaseException:
            for engine in engines.values():
                engine.close()
            raise
        return engines
