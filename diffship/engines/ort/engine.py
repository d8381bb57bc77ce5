"""ONNX Runtime adapter: CPU provider by default, CUDA provider (with I/O binding) when onnxruntime-gpu and a GPU are there.

With ``OrtOptions(cuda_graph=True)`` each input shape gets its own static-shape session (the ONNX graph's symbolic
dimensions pinned with free-dimension overrides, so that shape computations fold away) whose run ONNX Runtime captures
into a CUDA graph on the first call and replays afterwards: inputs are copied into fixed device buffers, the graph is
launched, outputs are read back from fixed buffers. A component ONNX Runtime cannot capture (it keeps a node on the
CPU, as the CLIP text encoder does) runs uncaptured, with a warning; measured on an H100 (BENCHMARKS.md), the UNet
step went from 16.1 to 14.5 ms.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.specs import ComponentSpec
from diffship.engines.backend import BackendOptions
from diffship.engines.base import EngineBase, check_feeds
from diffship.engines.errors import EngineError, MissingLibraryError
from diffship.engines.onnx.session import GRAPH_OPTIMIZATION, import_onnxruntime, open_session

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda", "auto")
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}

CUDA_DEFAULTS: Mapping[tuple[str, bool], Mapping[str, str]] = {
    # ONNX Runtime's exhaustive cuDNN search picks slow convolutions for the VAE's large activations (H100, fp16,
    # 512x512: decoder 92 -> 22 ms per call with the heuristic); the UNet keeps it (17.1 vs 16.1 ms with the heuristic).
    ("vae_decoder", False): {"cudnn_conv_algo_search": "HEURISTIC"},
    ("vae_decoder", True): {"cudnn_conv_algo_search": "HEURISTIC"},
    ("vae_encoder", False): {"cudnn_conv_algo_search": "HEURISTIC"},
    ("vae_encoder", True): {"cudnn_conv_algo_search": "HEURISTIC"},
    # NHWC convolutions add layout transposes that cost more than they save when every kernel is launched (UNet step
    # 18.9 vs 16.1 ms) and pay once a CUDA graph replays the launches (11.8 vs 14.5 ms). BENCHMARKS.md, "GPU".
    ("unet", True): {"prefer_nhwc": "1"},
}
"""CUDA provider options per (component, captured into a CUDA graph), measured with scripts/ort_cuda_tuning.py;
``OrtOptions.cuda_provider_options`` overrides them."""


@dataclass(frozen=True)
class OrtOptions(BackendOptions):
    """The ``ort`` backend's options (``OpenRequest.options``)."""

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
    cuda_graph: bool = False
    """CUDA provider: capture each input shape's run into a CUDA graph and replay it. Each shape holds its own
    session (and a copy of the weights on the GPU); at most ``cuda_graph_shapes`` are kept, least recently used first
    out."""
    cuda_graph_shapes: int = 2
    tf32: bool = False
    """CUDA provider: let fp32 convolutions and matrix products use TF32 (faster on Ampere and newer, about 1e-3
    relative error). Off by default so that an fp32 engine computes in fp32, as the parity bars assume."""
    profile_prefix: str | None = None
    """Write ONNX Runtime's per-node profile of every call to ``<prefix>_<time>.json``
    (``engine.session.end_profiling()`` ends it and returns the path); for ``bench.op_profile``."""
    cuda_provider_options: Mapping[str, str] = field(default_factory=dict)
    """Extra CUDA provider options (e.g. ``prefer_nhwc``, ``cudnn_conv_algo_search``), passed as given; they override
    the per-component ``CUDA_DEFAULTS``."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise EngineError(f"unknown ONNX Runtime device {self.device!r}; choose {', '.join(DEVICES)}")
        if self.graph_optimization not in GRAPH_OPTIMIZATION:
            raise EngineError(
                f"unknown graph optimisation level {self.graph_optimization!r}; choose {', '.join(GRAPH_OPTIMIZATION)}"
            )
        if self.threads is not None and self.threads < 1:
            raise EngineError(f"threads must be >= 1, got {self.threads}")
        if self.cuda_graph and self.device == "cpu":
            raise EngineError("CUDA graphs need the CUDA provider: use device 'cuda' (or 'auto' on a GPU machine)")
        if self.cuda_graph_shapes < 1:
            raise EngineError(f"cuda_graph_shapes must be >= 1, got {self.cuda_graph_shapes}")


def cuda_provider_options(component: str, graph: bool, options: OrtOptions) -> dict[str, str]:
    """The CUDA provider's options for one component's session: ``CUDA_DEFAULTS``, then the caller's overrides."""
    cuda = {"device_id": "0", "use_tf32": "1" if options.tf32 else "0", **CUDA_DEFAULTS.get((component, graph), {}),
            **options.cuda_provider_options}
    if graph:
        cuda["enable_cuda_graph"] = "1"
    return cuda


class OrtEngine(EngineBase):
    """One ONNX model in an ``onnxruntime.InferenceSession``."""

    def __init__(
        self,
        onnx_path: Path,
        spec: ComponentSpec,
        options: OrtOptions | None = None,
        initializers: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``initializers``: weights that replace the graph's of the same name (LoRA-merged; see ``open_session``)."""
        ort = import_onnxruntime()
        self.initializers = dict(initializers or {})
        if self.initializers and (options or OrtOptions()).graph_optimization == "all":
            # ONNX Runtime's layout optimiser (NCHWc on the CPU) reorders convolution filters from the graph's own
            # initializers and ignores overrides of them (tests/engines/test_ort_engine.py keeps checking that), so
            # a session with overrides stops one level short of it. build-ort's CPU graphs are reordered already
            # and open without optimisation: their LoRA sessions keep the NCHWc kernels.
            options = replace(options or OrtOptions(), graph_optimization="extended")
        self._ort = ort
        self.spec = spec
        self.path = Path(onnx_path)
        self.options = options = options or OrtOptions()
        self.device = self._pick_device(ort, options.device)
        self.cuda_graph = options.cuda_graph and self.device == "cuda"
        if options.cuda_graph and not self.cuda_graph:
            log.warning("%s: CUDA graphs need the CUDA provider, which is not available; running without", spec.name)
        self._graphs: OrderedDict[tuple[tuple[int, ...], ...], _GraphedRun] = OrderedDict()
        self._graph_lock = threading.Lock()
        self.session = self._open_session()
        if self.device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            log.warning("%s: the CUDA provider did not load; running on the CPU", spec.name)
            self.device, self.cuda_graph = "cpu", False
        self._check_io(self.session)
        self._output_names = [t.name for t in spec.outputs]
        self._run_options = ort.RunOptions()
        if options.shrink_arena and self.device == "cpu" and options.memory_arena:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _check_io(self, session: Any) -> None:
        """The graph's own inputs and outputs must be the spec's, names and dtypes both."""
        for kind, declared, expected in (("inputs", session.get_inputs(), self.spec.inputs),
                                         ("outputs", session.get_outputs(), self.spec.outputs)):
            found = {i.name: ORT_TYPES.get(i.type, i.type) for i in declared}
            wanted = {t.name: t.dtype for t in expected}
            if found != wanted:
                raise EngineError(
                    f"{self.path} has {kind} {found}, the manifest says {wanted}; re-export the package or rebuild "
                    "its engines"
                )

    def _providers(self, graph: bool = False) -> list[Any]:
        if self.device != "cuda":
            return ["CPUExecutionProvider"]
        cuda = cuda_provider_options(self.spec.name, graph, self.options)
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]

    def _open_session(self, free_dimensions: Mapping[str, int] | None = None, graph: bool = False) -> Any:
        options = self.options
        return open_session(
            self.path, providers=self._providers(graph), optimization=options.graph_optimization,
            threads=options.threads, memory_arena=options.memory_arena, memory_pattern=options.memory_pattern,
            config=options.session_config, free_dimensions=free_dimensions, initializers=self.initializers,
            profile_prefix=Path(options.profile_prefix) if options.profile_prefix else None,
            what=" (as a CUDA graph: open it without CUDA graphs)" if graph else "",
        )

    @property
    def runs_on(self) -> str:
        return self.device

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
        if self.cuda_graph:
            with self._graph_lock:  # a captured graph runs on fixed buffers: one call at a time
                graphed = self._graphed(checked)
                if graphed is not None:
                    return graphed(checked)
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

    def _graphed(self, feeds: Mapping[str, np.ndarray]) -> _GraphedRun | None:
        """The captured run for these input shapes: reused, or a new static-shape session (the oldest dropped);
        None when ONNX Runtime cannot capture this graph (some node runs on the CPU), which then runs uncaptured."""
        key = tuple(tuple(feeds[t.name].shape) for t in self.spec.inputs)
        run = self._graphs.get(key)
        if run is not None:
            self._graphs.move_to_end(key)
            return run
        if len(self._graphs) >= self.options.cuda_graph_shapes:
            _, dropped = self._graphs.popitem(last=False)
            dropped.close()
        dims: dict[str, int] = {}
        for tensor in self.spec.inputs:
            for dim, size in zip(tensor.shape, feeds[tensor.name].shape, strict=True):
                if isinstance(dim, str):
                    dims[dim] = int(size)
        log.debug("%s: new CUDA-graph session for %s", self.spec.name, dims)
        try:
            session = self._open_session(dims, graph=True)
        except EngineError as exc:
            if self._graphs or "session" not in self.__dict__:
                raise
            log.warning("%s: not captured as a CUDA graph, running it without: %s", self.spec.name, exc)
            self.cuda_graph = False
            return None
        run = _GraphedRun(self._ort, session, self.spec, feeds)
        # The dynamic session only served to check the file; its weights need not sit on the GPU twice.
        self.__dict__.pop("session", None)
        self._graphs[key] = run
        return run

    def close(self) -> None:
        for run in self.__dict__.get("_graphs", {}).values():
            run.close()
        self.__dict__.get("_graphs", {}).clear()
        self.__dict__.pop("session", None)


class _GraphedRun:
    """One static-shape session with fixed device buffers, so that ONNX Runtime can replay its captured CUDA graph."""

    def __init__(self, ort: Any, session: Any, spec: ComponentSpec, feeds: Mapping[str, np.ndarray]) -> None:
        self.session = session
        self.binding = session.io_binding()
        self.inputs: dict[str, Any] = {}
        for tensor in spec.inputs:
            shape = list(feeds[tensor.name].shape)
            value = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.dtype(tensor.dtype), "cuda", 0)
            self.binding.bind_ortvalue_input(tensor.name, value)
            self.inputs[tensor.name] = value
        declared = {o.name: o.shape for o in session.get_outputs()}
        self.outputs: dict[str, Any] = {}
        for tensor in spec.outputs:
            shape = declared[tensor.name]
            if not all(isinstance(d, int) for d in shape):
                raise EngineError(
                    f"{spec.name}: ONNX Runtime cannot tell the shape of output {tensor.name!r} ({shape}) for CUDA "
                    "graph capture; open it without CUDA graphs"
                )
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(tensor.dtype), "cuda", 0)
            self.binding.bind_ortvalue_output(tensor.name, value)
            self.outputs[tensor.name] = value

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            self.inputs[name].update_inplace(array)
        # The first run allocates, captures and replays; later runs only replay.
        self.session.run_with_iobinding(self.binding)
        return {name: value.numpy() for name, value in self.outputs.items()}

    def close(self) -> None:
        self.__dict__.pop("binding", None)
        self.inputs.clear()
        self.outputs.clear()
        self.__dict__.pop("session", None)
