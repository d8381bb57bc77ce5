"""ONNX Runtime adapter: CPU provider by default, CUDA provider (with I/O binding) when onnxruntime-gpu and a GPU are there."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineBase, check_feeds
from engines.errors import EngineError, MissingLibraryError
from engines.specs import ComponentSpec

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
GRAPH_OPTIMIZATION = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtOptions:
    device: str = "cpu"
    """``cpu``, ``cuda`` (needs onnxruntime-gpu and an NVIDIA GPU), or ``auto`` (CUDA when available)."""
    threads: int | None = None
    """Intra-op threads; None lets ONNX Runtime use one per physical core."""
    graph_optimization: str = "all"
    memory_arena: bool = True
    memory_pattern: bool = True
    session_config: Mapping[str, str] = field(default_factory=dict)
    """Extra ``SessionOptions.add_session_config_entry`` keys (e.g. ``session.disable_prepacking``)."""
    prebuilt: bool = True
    """Use the package's ``build-ort`` engines (fused attention, optimised once) when they match this CPU."""
    shrink_arena: bool = True
    """Return the CPU arena's free chunks after every call: the UNet's activations are not still held while the
    VAE decodes (measured at 512x512: peak 6.7 -> 5.1 GiB, step time unchanged; BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise EngineError(f"unknown ONNX Runtime device {self.device!r}; choose {', '.join(DEVICES)}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise EngineError(
                f"unknown graph optimisation level {self.graph_optimization!r}; choose {', '.join(GRAPH_OPTIMIZATION)}"
            )
        if self.threads is not None and self.threads < 1:
            raise EngineError(f"threads must be >= 1, got {self.threads}")


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


class OrtEngine(EngineBase):
    """One ONNX model in an ``onnxruntime.InferenceSession``."""

    def __init__(self, onnx_path: Path, spec: ComponentSpec, options: OrtOptions | None = None) -> None:
        ort = import_onnxruntime()
        self.spec = spec
        self.path = Path(onnx_path)
        self.options = options = options or OrtOptions()
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.graph_optimization]
        if options.threads is not None:
            session_options.intra_op_num_threads = options.threads
            session_options.inter_op_num_threads = 1
        session_options.enable_cpu_mem_arena = options.memory_arena
        session_options.enable_mem_pattern = options.memory_pattern
        session_options.log_severity_level = 3
        for key, value in options.session_config.items():
            session_options.add_session_config_entry(key, value)
        self.device = self._pick_device(ort, options.device)
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device == "cuda":
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), session_options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for every failure
            raise EngineError(f"ONNX Runtime cannot load {onnx_path}: {str(exc).strip().splitlines()[0]}") from exc
        if self.device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            log.warning("%s: the CUDA provider did not load; running on the CPU", spec.name)
            self.device = "cpu"
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(t.name for t in spec.inputs):
            raise EngineError(f"{onnx_path} has inputs {names}, the manifest says {[t.name for t in spec.inputs]}")
        self._output_names = [t.name for t in spec.outputs]
        self._run_options = ort.RunOptions()
        if options.shrink_arena and self.device == "cpu" and options.memory_arena:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @staticmethod
    def _pick_device(ort: Any, requested: str) -> str:
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        if requested == "cuda" and not has_cuda:
            raise MissingLibraryError(
                "the CUDA provider needs onnxruntime-gpu: pip install 'diffship[ort-gpu]' (and an NVIDIA GPU)"
            )
        return "cuda" if requested == "cuda" or (requested == "auto" and has_cuda) else "cpu"

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.spec, feeds, self.profile)
        if self.device == "cuda":
            # Outputs stay on the GPU until one copy back; inputs go up once per call.
            binding = self.session.io_binding()
            for name, array in checked.items():
                binding.bind_cpu_input(name, array)
            for name in self._output_names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            return dict(zip(self._output_names, binding.copy_outputs_to_cpu(), strict=True))
        outputs = self.session.run(self._output_names, checked, self._run_options)
        return dict(zip(self._output_names, outputs, strict=True))

    def close(self) -> None:
        self.__dict__.pop("session", None)
