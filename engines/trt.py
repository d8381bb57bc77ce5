"""TensorRT runtime backend (no torch): deserialize, execution context, device buffers and a stream via cuda-python.

Serves engines built by ``build-trt`` with either library. Per call: set the input shapes, copy inputs to the GPU,
``execute_async_v3`` on our stream, copy the outputs back. With ``cuda_graphs=True`` and a static profile, the
first call is captured into a CUDA graph and later calls replay it. Refuses, with the reason, engines built for
another GPU or library version and shapes outside the engine's profile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engines import tensorrt_api as api
from engines.base import EngineBase, check_feeds
from engines.errors import EngineError, MissingLibraryError
from engines.package import EngineSet, ModelPackage, PackageError
from engines.specs import ComponentSpec, ShapeProfile
from engines.tensorrt_api import Library, load_library, local_gpu_arch

log = logging.getLogger(__name__)


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


class TrtEngine(EngineBase):
    """One serialized TensorRT / TensorRT-RTX engine on GPU 0."""

    def __init__(
        self,
        plan: bytes,
        spec: ComponentSpec,
        profile: ShapeProfile,
        library: Library,
        label: str,
        cuda_graphs: bool = False,
    ) -> None:
        self.spec, self.profile, self.label = spec, profile, label
        self.cudart = cudart = import_cudart()
        count = int(_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))
        if count < 1:
            raise EngineError("TensorRT engines run on an NVIDIA GPU and none is visible; use --backend ort")
        api.bind(library)
        trt = api.trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self._check_validity(plan)
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(
                f"{label}: {library.name} {library.version} could not deserialize the engine; it was probably built "
                "for another GPU or library version (see the messages above); rebuild with build-trt on this machine"
            )
        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"{label}: cannot create an execution context (out of GPU memory?)")
        self.context = context
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers = {t.name: _Buffer(cudart) for t in (*spec.inputs, *spec.outputs)}
        self.cuda_graphs = cuda_graphs and all(lo == hi for lo, _, hi in profile.shapes.values())
        self._graph: Any = None
        self._graph_shapes: dict[str, tuple[int, ...]] | None = None

    def _check_validity(self, plan: bytes) -> None:
        validity_check = getattr(self.runtime, "get_engine_validity", None)  # TensorRT-RTX only
        if validity_check is None:
            return
        validity, diagnostics = validity_check(plan)
        if str(validity).endswith("INVALID"):
            # The library reports a bit mask (seen on an H100: 2, UNSUPPORTED_CC); name the bits it sets.
            flags = getattr(api.trt, "EngineInvalidityDiagnostics", None)
            reasons = [name for name in dir(flags) if name.isupper() and int(diagnostics) & int(getattr(flags, name))]
            raise EngineError(
                f"{self.label}: the engine cannot run here ({', '.join(reasons) or diagnostics}; this GPU is "
                f"{local_gpu_arch()}): built for another GPU architecture, library version or driver; rebuild with "
                "build-trt --arch for this GPU (TensorRT-RTX does not target datacentre Hopper/Blackwell parts such "
                "as sm90, sm100: use full TensorRT there)"
            )

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.spec, feeds, self.profile)
        cudart, context, stream = self.cudart, self.context, self.stream
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
        cudart, stream = self.cudart, self.stream
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

    def close(self) -> None:
        for buffer in getattr(self, "buffers", {}).values():
            buffer.release()
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        for attribute in ("context", "engine", "runtime"):
            self.__dict__.pop(attribute, None)


def choose_engine_set(package: ModelPackage, name: str | None, precision: str | None) -> EngineSet:
    """The engine set to run: the one named, else one built for this GPU with an installed library."""
    sets = package.manifest.engines
    if not sets:
        raise EngineError(
            f"package {package.root} has no TensorRT engines; build them with "
            f"`python cli.py build-trt --package {package.root} --fp16`"
        )
    if name is not None:
        if name not in sets:
            raise EngineError(f"no engine set {name!r} in {package.root}; it has {', '.join(sets)}")
        return sets[name]
    arch = local_gpu_arch()
    if arch is None:
        raise EngineError("TensorRT engines run on an NVIDIA GPU and none was found; use --backend ort")
    candidates = [s for s in sets.values() if arch in s.archs and (precision is None or s.precision == precision)]
    candidates.sort(key=lambda s: (s.backend != "trt", s.precision != "fp16"))
    for engine_set in candidates:
        try:
            load_library(engine_set.backend)
            return engine_set
        except MissingLibraryError:
            continue
    built = ", ".join(f"{s.name} ({s.library} {s.library_version})" for s in sets.values())
    raise EngineError(
        f"no engine set here runs on this GPU ({arch}) with an installed TensorRT library; built: {built}. "
        f"Build one with `python cli.py build-trt --package {package.root} --fp16`"
    )


def open_trt_engines(
    package: ModelPackage,
    components: Sequence[str],
    engine_set: str | None = None,
    precision: str | None = None,
    cuda_graphs: bool = False,
) -> dict[str, EngineBase]:
    chosen = choose_engine_set(package, engine_set, precision)
    library = load_library(chosen.backend)
    if library.version != chosen.library_version:
        raise EngineError(
            f"engines in engines/{chosen.name} were built with {chosen.library} {chosen.library_version}; this machine "
            f"has {library.version}, which cannot load them: rebuild with build-trt"
        )
    opened: dict[str, EngineBase] = {}
    for component in components:
        entry = chosen.components.get(component)
        if entry is None:
            raise EngineError(f"engine set {chosen.name} has no {component}; rebuild with build-trt")
        try:
            plan = package.verify_file(entry.plan).read_bytes()
        except PackageError as exc:
            raise EngineError(str(exc)) from None
        spec = package.variant(component, entry.onnx_dtype).spec
        log.debug("loading %s from %s", component, entry.plan)
        opened[component] = TrtEngine(plan, spec, entry.profile, library, f"{chosen.name}/{component}", cuda_graphs)
    return opened
