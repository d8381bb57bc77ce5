"""Open a package's components as engines of one backend, after checking every file against the manifest."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from engines.base import EngineBase
from engines.errors import EngineError
from engines.ort import OrtEngine, OrtOptions, cuda_available, import_onnxruntime
from engines.package import EngineSet, ModelPackage

log = logging.getLogger(__name__)

BACKENDS = ("ort", "trt")


def default_precision(package: ModelPackage) -> str:
    dtypes = package.dtypes()
    if not dtypes:
        raise EngineError(f"package {package.root} has no complete export (every component in one precision)")
    return dtypes[0]


def prebuilt_ort_engines(package: ModelPackage, precision: str, options: OrtOptions) -> EngineSet | None:
    """The ``build-ort`` engine set for where the session will run (this CPU, or the CUDA provider) and this
    onnxruntime version; None when there is none."""
    if not options.prebuilt:
        return None
    from engines.ort_build import ort_engine_set_name

    cuda = options.device == "cuda" or (options.device == "auto" and cuda_available())
    engine_set = package.manifest.engines.get(ort_engine_set_name(precision, "cuda" if cuda else "cpu"))
    if engine_set is None:
        return None
    installed = import_onnxruntime().__version__
    if engine_set.library_version != installed:
        log.warning("ignoring engines/%s: built with onnxruntime %s, this is %s (run build-ort again)",
                    engine_set.name, engine_set.library_version, installed)
        return None
    return engine_set


def open_engines(
    package: ModelPackage,
    components: Sequence[str],
    backend: str = "ort",
    precision: str | None = None,
    ort_options: OrtOptions | None = None,
    engine_set: str | None = None,
    cuda_graphs: bool = False,
) -> dict[str, EngineBase]:
    """``components`` of ``package`` as engines; ONNX/plan files are loaded only if their sha256 matches."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    engines: dict[str, EngineBase] = {}
    try:
        if backend == "ort":
            dtype = precision or default_precision(package)
            options = ort_options or OrtOptions()
            if cuda_graphs:
                options = replace(options, cuda_graph=True)
            prebuilt = prebuilt_ort_engines(package, dtype, options)
            for component in components:
                variant = package.variant(component, dtype)
                entry = prebuilt.components.get(component) if prebuilt else None
                if entry is not None and prebuilt is not None and prebuilt.archs == ("cuda",):
                    # Attention fused only; the CUDA provider optimises the rest of the graph when the session opens.
                    files = [entry.plan, *(f for f in package.manifest.files if f == entry.plan + ".data")]
                    path, component_options = package.path(entry.plan), options
                elif entry is not None:
                    files = [entry.plan, *(f for f in package.manifest.files if f == entry.plan + ".data")]
                    # Optimised once already; without prepacking the weights stay memory-mapped and a session opens
                    # in a fraction of a second (measured: same step time, see BENCHMARKS.md).
                    session_config = {"session.disable_prepacking": "1", **options.session_config}
                    path = package.path(entry.plan)
                    component_options = replace(options, graph_optimization="disable", session_config=session_config)
                else:
                    files, path, component_options = list(variant.files), package.path(variant.onnx), options
                for relative in files:
                    package.verify_file(relative)
                log.debug("loading %s (%s) from %s into ONNX Runtime", component, dtype, path)
                engines[component] = OrtEngine(path, variant.spec, component_options)
        else:
            from engines.trt import open_trt_engines

            engines.update(open_trt_engines(package, components, engine_set, precision, cuda_graphs))
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines
