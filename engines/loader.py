"""Open a package's components as engines of one backend, after checking every file against the manifest."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from engines.base import EngineBase
from engines.errors import EngineError
from engines.ort import OrtEngine, OrtOptions
from engines.package import ModelPackage

log = logging.getLogger(__name__)

BACKENDS = ("ort", "trt")


def default_precision(package: ModelPackage) -> str:
    dtypes = package.dtypes()
    if not dtypes:
        raise EngineError(f"package {package.root} has no complete export (every component in one precision)")
    return dtypes[0]


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
            for component in components:
                variant = package.variant(component, dtype)
                for relative in variant.files:
                    package.verify_file(relative)
                log.debug("loading %s (%s) into ONNX Runtime", component, dtype)
                engines[component] = OrtEngine(package.path(variant.onnx), variant.spec, ort_options)
        else:
            from engines.trt import open_trt_engines

            engines.update(open_trt_engines(package, components, engine_set, precision, cuda_graphs))
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines
