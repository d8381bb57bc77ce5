"""The ONNX Runtime backend: the CPU provider, or the CUDA provider with onnxruntime-gpu.

Run time: ``OrtBackend`` picks the package's ``build-ort`` engine set for where the sessions will run (this CPU
family, or ``cuda``) when one was built with this onnxruntime, else the exported ONNX, and opens ``OrtEngine``\\ s.
Build time (``engines.ort.build``, imported only by ``build-ort``): attention fusion and the CPU optimisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from core.manifest import OrtEngineSet
from core.package import ModelPackage
from engines.backend import OpenRequest, Selection
from engines.base import EngineBase
from engines.errors import EngineError
from engines.ort.engine import OrtEngine, OrtOptions
from engines.ort.session import cuda_available, import_onnxruntime
from engines.ort.targets import cpu_tag, ort_engine_set_name

__all__ = ["OrtBackend", "OrtEngine", "OrtOptions", "cpu_tag", "cuda_available", "import_onnxruntime"]

log = logging.getLogger(__name__)


def default_precision(package: ModelPackage) -> str:
    """fp32 when every component was exported in it, else fp16."""
    dtypes = package.dtypes()
    if not dtypes:
        raise EngineError(f"package {package.root} has no complete export (every component in one precision)")
    return dtypes[0]


class OrtBackend:
    name = "ort"

    @staticmethod
    def options(request: OpenRequest) -> OrtOptions:
        if request.options is not None:
            if not isinstance(request.options, OrtOptions):
                raise EngineError(f"the ort backend takes OrtOptions, not {type(request.options).__name__}")
            return replace(request.options, cuda_graph=request.options.cuda_graph or request.cuda_graphs)
        return OrtOptions(device=request.device, threads=request.threads, cuda_graph=request.cuda_graphs)

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        options = self.options(request)
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
        if not options.prebuilt:
            return Selection(self.name, precision)
        on_cuda = options.device == "cuda" or (options.device == "auto" and cuda_available())
        found = sets.get(ort_engine_set_name(precision, "cuda" if on_cuda else "cpu"))
        if not isinstance(found, OrtEngineSet):
            return Selection(self.name, precision)
        installed = import_onnxruntime().__version__
        if found.library_version != installed:
            log.warning("ignoring engines/%s: built with onnxruntime %s, this is %s (run build-ort again)",
                        found.name, found.library_version, installed)
            return Selection(self.name, precision)
        return Selection(self.name, precision, found)

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        options = self.options(request)
        engine_set = selection.engine_set
        engines: dict[str, EngineBase] = {}
        try:
            for component in components:
                variant = package.variant(component, selection.precision)
                entry = engine_set.components.get(component) if isinstance(engine_set, OrtEngineSet) else None
                if entry is None:
                    files, path, component_options = variant.files, package.path(variant.onnx), options
                elif isinstance(engine_set, OrtEngineSet) and engine_set.target == "cuda":
                    # Attention fused only; the CUDA provider optimises the rest of the graph when the session opens.
                    files, path, component_options = entry.files, package.path(entry.graph), options
                else:
                    # Optimised once already; without prepacking the weights stay memory-mapped and a session opens
                    # in a fraction of a second (measured: same step time, see BENCHMARKS.md).
                    config = {"session.disable_prepacking": "1", **options.session_config}
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
