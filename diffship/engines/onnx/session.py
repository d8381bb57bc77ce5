"""ONNX Runtime sessions, set up in one place for everything that opens one: the ``ort`` backend's engines, every
build's check against the source ONNX, the fp16 conversion check and the exporter's verification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffship.engines.errors import EngineError, MissingLibraryError

GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingLibraryError(
            "ONNX Runtime is not installed: pip install 'diffship[ort]' (CPU) or 'diffship[ort-gpu]' (NVIDIA GPUs)"
        ) from None
    return onnxruntime


def cuda_available() -> bool:
    """Whether this onnxruntime build has the CUDA provider (onnxruntime-gpu); says nothing of a GPU being there."""
    try:
        return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    except MissingLibraryError:
        return False


def open_session(
    path: Path,
    *,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    optimization: str = "all",
    threads: int | None = None,
    memory_arena: bool = True,
    memory_pattern: bool = True,
    config: Mapping[str, str] | None = None,
    free_dimensions: Mapping[str, int] | None = None,
    optimized_model: Path | None = None,
    initializers: Mapping[str, Any] | None = None,
    profile_prefix: Path | None = None,
    what: str = "",
) -> Any:
    """An ``InferenceSession`` for ``path``; ONNX Runtime's own failure becomes one EngineError line.

    ``free_dimensions`` pins symbolic dimensions (static-shape sessions); ``optimized_model`` saves the optimised
    graph there (its weights in ``<name>.data``); ``initializers`` (name -> numpy array) replace the graph's weights
    of those names as the session is created (LoRA-merged weights), without rewriting the graph. ``profile_prefix``:
    ONNX Runtime writes a per-node profile to ``<prefix>_<time>.json`` (``session.end_profiling()`` returns the path).
    """
    ort = import_onnxruntime()
    if optimization not in GRAPH_OPTIMIZATION:
        raise EngineError(f"unknown graph optimisation level {optimization!r}; choose {', '.join(GRAPH_OPTIMIZATION)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = memory_pattern
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    for name, size in (free_dimensions or {}).items():
        options.add_free_dimension_override_by_name(name, size)
    if optimized_model is not None:
        options.optimized_model_filepath = str(optimized_model)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         f"{optimized_model.name}.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # ONNX Runtime uses these buffers in place: they must live as long as the session, which holds them.
    values = [(name, ort.OrtValue.ortvalue_from_numpy(array)) for name, array in (initializers or {}).items()]
    for name, value in values:
        options.add_initializer(name, value)
    if any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers):
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
        session.diffship_initializers = values
        return session
    except Exception as exc:  # ORT raises its own exception types for every failure
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"ONNX Runtime cannot load {path}{what}: {message}") from exc


def run_session(session: Any, feeds: Mapping[str, Any]) -> list[Any]:
    """All outputs of ``session`` for ``feeds``, each input cast to the dtype the graph declares (fp16 graphs)."""
    import numpy as np

    declared = {i.name: i.type for i in session.get_inputs()}
    cast = {name: value.astype(np.float16) if declared.get(name) == "tensor(float16)" else value
            for name, value in feeds.items()}
    outputs: list[Any] = session.run(None, cast)
    return outputs
