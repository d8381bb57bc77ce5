"""TensorRT engines at run time (no torch): deserialize, execution contexts, device memory and a stream via cuda-python.

Serves plans built by ``build-trt`` with either library. The engines of one pipeline share one runtime, one stream and
one activation pool sized for the largest of them (contexts created with user-managed memory, as NVIDIA's demo does),
since a pipeline runs its components one after another. Per call: set the input shapes, copy inputs to the GPU,
``execute_async_v3`` on the stream, copy the outputs back. With ``cuda_graphs=True`` and a static profile, the first
call is captured into a CUDA graph and later calls replay it. Each plan's own I/O names and dtypes are checked against
the manifest's spec at load; plans built for another GPU or library version are refused with the library's reason.
Plans built refittable take new values for the weights their weight map names (``TrtEngine.refit``: LoRA without a
rebuild).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffship.core.specs import ComponentSpec, ShapeProfile
from diffship.engines.base import EngineBase, check_feeds
from diffship.engines.errors import EngineError, MissingLibraryError
from diffship.engines.tensorrt import api
from diffship.engines.tensorrt.api import Library, local_gpu_arch

log = logging.getLogger(__name__)

NUMPY_OF_TRT = {"FLOAT": "float32", "HALF": "float16", "INT64": "int64", "INT32": "int32", "BF16": "bfloat16"}


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError:
            raise MissingLibraryError(
                "running TensorRT engines needs cuda-python for device memory and streams: pip install 'diffship[cuda]'"
            ) from None
    return runtime


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...); raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise EngineError(f"CUDA error in {what}: {error}")
    return values[0] if len(values) == 1 else tuple(values)


class _Buffer:
    """One device allocation, grown on demand."""

    def __init__(self, cudart: Any) -> None:
        self.cudart, self.pointer, self.size = cudart, 0, 0

    def ensure(self, size: int) -> int:
        if size > self.size:
            self.release()
            self.pointer = int(_check(self.cudart.cudaMalloc(size), "cudaMalloc"))
            self.size = size
        return self.pointer

    def release(self) -> None:
        if self.pointer:
            self.cudart.cudaFree(self.pointer)
            self.pointer, self.size = 0, 0


class Device:
    """What the engines of one pipeline share: the TensorRT runtime, a stream and the activation memory pool."""

    def __init__(self, library: Library) -> None:
        self.cudart = cudart = import_cudart()
        count = int(_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
        if count < 1:
            raise EngineError("TensorRT engines run on an NVIDIA GPU and none is visible; use --backend ort")
        api.bind(library)
        self.library = library
        self.logger = api.trt.Logger(api.trt.Logger.WARNING)
        self.runtime = api.trt.Runtime(self.logger)
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.activations = _Buffer(cudart)
        self.users = 0
        """Engines still open on this device; the last to close releases the stream and the pool."""
        self.lock = threading.Lock()
        """One call at a time: the engines share the stream and the activation pool."""

    def deserialize(self, plan: bytes, label: str) -> Any:
        validity_check = getattr(self.runtime, "get_engine_validity", None)  # TensorRT-RTX only
        if validity_check is not None:
            validity, diagnostics = validity_check(plan)
            if str(validity).endswith("INVALID"):
                # The library reports a bit mask (seen on an H100: 2, UNSUPPORTED_CC); name the bits it sets.
                flags = getattr(api.trt, "EngineInvalidityDiagnostics", None)
                reasons = [n for n in dir(flags) if n.isupper() and int(diagnostics) & int(getattr(flags, n))]
                raise EngineError(
                    f"{label}: the engine cannot run here ({', '.join(reasons) or diagnostics}; this GPU is "
                    f"{local_gpu_arch()}): built for another GPU architecture, library version or driver; rebuild "
                    "with build-trt --arch for this GPU (TensorRT-RTX does not target datacentre Hopper/Blackwell "
                    "parts such as sm90, sm100: use full TensorRT there)"
                )
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(
                f"{label}: {self.library.name} {self.library.version} could not deserialize the engine; it was "
                "probably built for another GPU or library version; rebuild with build-trt on this machine"
            )
        return engine

    def reserve(self, size: int) -> None:
        """Grow the shared activation pool to hold ``size`` bytes (the largest engine's need)."""
        self.activations.ensure(size)

    def close(self) -> None:
        self.activations.release()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.__dict__.pop("runtime", None)


def activation_bytes(engine: Any) -> int:
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


class TrtEngine(EngineBase):
    """One deserialized TensorRT / TensorRT-RTX engine on GPU 0, running on its pipeline's ``Device``."""

    @property
    def runs_on(self) -> str:
        return "cuda"

    def __init__(
        self,
        engine: Any,
        spec: ComponentSpec,
        profile: ShapeProfile,
        device: Device,
        label: str,
        cuda_graphs: bool = False,
    ) -> None:
        self.spec, self.profile, self.label, self.device = spec, profile, label, device
        self.engine = engine
        check_io(engine, spec, label)
        trt = api.trt
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        context = (engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
                   else engine.create_execution_context_without_device_memory())
        if context is None:
            raise EngineError(f"{label}: cannot create an execution context (out of GPU memory?)")
        self.context = context
        device.users += 1
        self.cudart = device.cudart
        self.buffers = {t.name: _Buffer(device.cudart) for t in (*spec.inputs, *spec.outputs)}
        self.cuda_graphs = cuda_graphs and all(lo == hi for lo, _, hi in profile.shapes.values())
        self._graph: Any = None
        self._graph_shapes: dict[str, tuple[int, ...]] | None = None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.spec, feeds, self.profile)
        with self.device.lock:
            return self._run(checked)

    def _run(self, checked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, context, stream = self.cudart, self.context, self.device.stream
        activations = self.device.activations
        setter = getattr(context, "set_device_memory", None)
        if setter is not None:
            setter(activations.pointer, activations.size)
        else:
            context.device_memory = activations.pointer
        host_to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        shapes = {name: tuple(array.shape) for name, array in checked.items()}
        for name, array in checked.items():
            context.set_input_shape(name, api.trt.Dims([int(d) for d in array.shape]))
            pointer = self.buffers[name].ensure(array.nbytes)
            _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, host_to_device, stream), "copy in")
            context.set_tensor_address(name, pointer)
        outputs = {}
        for tensor in self.spec.outputs:
            dims = context.get_tensor_shape(tensor.name)
            shape = tuple(dims[axis] for axis in range(len(dims)))
            outputs[tensor.name] = np.empty(shape, dtype=tensor.dtype)
            context.set_tensor_address(tensor.name, self.buffers[tensor.name].ensure(outputs[tensor.name].nbytes))
        self._execute(shapes)
        device_to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in outputs.items():
            _check(
                cudart.cudaMemcpyAsync(array.ctypes.data, self.buffers[name].pointer, array.nbytes, device_to_host, stream),
                "copy out",
            )
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return outputs

    def _execute(self, shapes: dict[str, tuple[int, ...]]) -> None:
        cudart, stream = self.cudart, self.device.stream
        if self._graph is not None and shapes == self._graph_shapes:
            _check(cudart.cudaGraphLaunch(self._graph, stream), "cudaGraphLaunch")
            return
        if not self.context.execute_async_v3(int(stream)):
            raise EngineError(f"{self.label}: execute_async_v3 failed")
        if self.cuda_graphs and self._graph is None:
            # The first (normal) run has set everything up; capture the same work into a graph for replays.
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
            self.context.execute_async_v3(int(stream))
            graph = _check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
            self._graph = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            self._graph_shapes = shapes

    def refit(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the named weights (by the names the plan's weight map gives, in its stored layout and dtype, e.g.
        LoRA-merged ones); the others keep their current values, so to undo a LoRA, pass its weights' base values.
        Needs a plan built with ``--refittable``. After an EngineError some of the weights may have been set (as
        TensorRT documents): refit again, or reopen the engine."""
        if not weights:
            return
        started = time.perf_counter()
        with self.device.lock:
            refit_engine(self.engine, weights, self.label)
            self._drop_graph()
        log.info("%s: refitted %d weights in %.0f ms", self.spec.name, len(weights),
                 (time.perf_counter() - started) * 1e3)

    def _drop_graph(self) -> None:
        # A captured graph replays the launches of its capture; whether they read the refitted weights where the
        # capture saw the old ones is the library's business, so capture again on the next call.
        if self._graph is not None:
            self.cudart.cudaGraphExecDestroy(self._graph)
            self._graph, self._graph_shapes = None, None

    def close(self) -> None:
        for buffer in getattr(self, "buffers", {}).values():
            buffer.release()
        if self.__dict__.pop("context", None) is not None:
            self.device.users -= 1
            if self.device.users == 0:
                self.device.close()
        self.__dict__.pop("engine", None)


def refit_engine(engine: Any, weights: Mapping[str, np.ndarray], label: str) -> None:
    """Set ``weights`` in a deserialized refittable engine (no work may be running on it)."""
    trt = api.trt
    logger = api.capturing_logger()
    try:
        refitter = trt.Refitter(engine, logger)
        held = []  # TensorRT reads the arrays by reference until refit_cuda_engine returns
        for name, array in weights.items():
            data = np.ascontiguousarray(array)
            held.append(data)
            if not refitter.set_named_weights(name, trt.Weights(data)):
                raise EngineError(f"{label}: cannot refit {name}: {_refusal(refitter, name, data)}")
        missing = [name for name in refitter.get_missing_weights() if name]
        if missing:
            raise EngineError(
                f"{label}: the plan refits {', '.join(sorted(weights)[:3])} only together with weights not given "
                f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); pass those too (their base values)"
            )
        if not refitter.refit_cuda_engine():
            errors = api.logged_errors(logger)
            raise EngineError(f"{label}: refitting failed: {' | '.join(errors) or 'no error message'}")
    except (TypeError, ValueError, RuntimeError) as exc:
        # The bindings' own errors (an unsupported dtype, a released engine): one line, as every engine error.
        raise EngineError(f"{label}: cannot refit the engine: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None


def _refusal(refitter: Any, name: str, data: np.ndarray) -> str:
    prototype = refitter.get_weights_prototype(name)
    if prototype.size < 0:
        return ("the plan has no refittable weights of this name; its weight map and plan disagree: rebuild with "
                "build-trt --refittable")
    wanted = NUMPY_OF_TRT.get(str(prototype.dtype).rsplit(".", 1)[-1], str(prototype.dtype))
    return f"the plan holds {prototype.size} {wanted} values, given {data.size} {data.dtype}"


def check_io(engine: Any, spec: ComponentSpec, label: str) -> None:
    """The plan's own I/O tensors must be the spec's: same names, directions and dtypes."""
    trt = api.trt
    found = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1]
        found[name] = (mode, NUMPY_OF_TRT.get(dtype, dtype))
    wanted = {t.name: ("input", t.dtype) for t in spec.inputs} | {t.name: ("output", t.dtype) for t in spec.outputs}
    if found != wanted:
        raise EngineError(
            f"{label}: the plan's tensors {found} do not match the manifest's {wanted}; rebuild with build-trt"
        )
