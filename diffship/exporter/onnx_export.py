"""torch module -> ``model.onnx`` + ``model.onnx.data``, with the I/O named as in its ComponentSpec.

torch.onnx's dynamo exporter is the default; the legacy TorchScript exporter stays available (it is faster on big
models). Whichever runs, the result is re-saved once so that the graph's inputs and outputs carry the spec's
symbolic dimension names and all weights (over 1 KB) land in one external-data file, where the runtime can read the
ones a LoRA changes without parsing the graph (``core.weights``).

Modules whose weights pass ``STREAM_BYTES`` (SDXL's 10 GB UNet, its 2.8 GB second text encoder in fp32) are traced
without their weights, whichever exporter was asked for: the legacy TorchScript tracer writes the graph with the
parameters as inputs, and each parameter is then written straight from the torch module into the external-data file.
The weights are never copied into a protobuf, which is what made a full-size SDXL export need several times its
10 GB of weights in memory; the dynamo exporter has no such mode (it materialises every weight in its ONNX IR).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from diffship.core.specs import ComponentSpec
from diffship.engines.onnx.graphs import save_onnx

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = 18
ONNX_NAME = "model.onnx"


STREAM_BYTES = 2 * 1024**3
"""Parameters above this many bytes (the protobuf limit) are streamed (module docstring)."""
INLINE_BYTES = 1024
"""Smaller tensors stay inside the graph, as ``save_onnx`` leaves them."""
DATA_ALIGNMENT = 4096
"""Streamed tensors start on page boundaries, where ONNX Runtime memory-maps external data instead of copying it."""


@dataclass(frozen=True)
class ExportOptions:
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET
    stream_weights: bool | None = None
    """Trace without weights (with the legacy tracer, whichever ``exporter``) and stream them into the data file;
    None: when the module's parameters pass ``STREAM_BYTES``."""

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ValueError(f"unknown exporter {self.exporter!r}; choose {' or '.join(EXPORTERS)}")
        if self.opset < 18:
            # At opset 17 the dynamo exporter's down-conversion leaves Split(num_outputs) that ONNX Runtime rejects.
            raise ValueError(f"opset {self.opset} is not supported; use 18 or newer")


def export_component(
    module: torch.nn.Module,
    spec: ComponentSpec,
    example: tuple[torch.Tensor, ...],
    out_dir: Path,
    options: ExportOptions,
    multiples: Mapping[str, int],
    file_name: str = ONNX_NAME,
) -> list[Path]:
    """Export ``module`` into ``out_dir/file_name``; returns the files written (the ONNX file first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffship-onnx-", dir=out_dir) as scratch:
        raw_path = Path(scratch) / "raw.onnx"
        with _quiet_exporter():
            if streams_weights(module, options):
                _export_legacy(module, spec, example, raw_path, options.opset, export_params=False)
                return _finalize_streamed(raw_path, spec, module, out_dir / file_name)
            if options.exporter == "dynamo":
                _export_dynamo(module, spec, example, raw_path, options.opset, multiples)
            else:
                _export_legacy(module, spec, example, raw_path, options.opset)
        return _finalize(raw_path, spec, out_dir / file_name)


def _export_dynamo(
    module: torch.nn.Module,
    spec: ComponentSpec,
    example: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    multiples: Mapping[str, int],
) -> None:
    from torch.export import Dim

    dims: dict[str, object] = {}

    def dim(name: str) -> object:
        if name not in dims:
            multiple = multiples.get(name, 1)
            # Dims are declared as multiples so that torch.export can prove the UNet's up/down sampling lines up.
            dims[name] = Dim(name, min=1) if multiple == 1 else multiple * Dim(f"{name}_blocks", min=1)
        return dims[name]

    dynamic_shapes = {
        tensor.name: {axis: dim(d) for axis, d in enumerate(tensor.shape) if isinstance(d, str)}
        for tensor in spec.inputs
    }
    program = torch.onnx.export(
        module,
        example,
        dynamo=True,
        opset_version=opset,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    assert program is not None
    program.save(str(path))


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def streams_weights(module: torch.nn.Module, options: ExportOptions) -> bool:
    """Whether ``export_component`` traces ``module`` without its weights (module docstring)."""
    if options.stream_weights is not None:
        return options.stream_weights
    return parameter_bytes(module) > STREAM_BYTES


def _export_legacy(
    module: torch.nn.Module, spec: ComponentSpec, example: tuple[torch.Tensor, ...], path: Path, opset: int,
    export_params: bool = True,
) -> None:
    dynamic_axes = {
        tensor.name: {axis: d for axis, d in enumerate(tensor.shape) if isinstance(d, str)}
        for tensor in (*spec.inputs, *spec.outputs)
    }
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamic_axes=dynamic_axes,
        # Without the weights in the graph there is nothing to fold; ONNX Runtime and TensorRT fold when they load.
        do_constant_folding=export_params,
        export_params=export_params,
    )


def _finalize(raw_path: Path, spec: ComponentSpec, dest: Path) -> list[Path]:
    """Name the graph's I/O dimensions as in ``spec`` and save, its weights in one external-data file."""
    model = onnx.load(str(raw_path), load_external_data=True)
    _name_dimensions(model, spec)
    return save_onnx(model, dest, external=True)


def _finalize_streamed(raw_path: Path, spec: ComponentSpec, module: torch.nn.Module, dest: Path) -> list[Path]:
    """A graph traced without weights (its parameters are inputs named as in the state dict): each parameter written
    from the module into ``<dest>.data`` and turned into an initializer that points there."""
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(raw_path))
    _name_dimensions(model, spec)
    state = module.state_dict()
    wanted = {t.name for t in spec.inputs}
    data_path = dest.with_name(dest.name + ".data")
    for stale in (dest, data_path):
        stale.unlink(missing_ok=True)
    kept, initializers = [], []
    with open(data_path, "wb") as data:
        for value in model.graph.input:
            if value.name in wanted:
                kept.append(value)
                continue
            if value.name not in state:
                raise RuntimeError(f"the traced graph reads {value.name!r}, which is neither an input of the spec nor "
                                   "a parameter of the module")
            array = state[value.name].detach().cpu().contiguous().numpy()
            if array.nbytes < INLINE_BYTES:
                initializers.append(numpy_helper.from_array(array, value.name))
                continue
            tensor = TensorProto(name=value.name, dims=array.shape,
                                 data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
            tensor.data_location = TensorProto.EXTERNAL
            data.write(b"\0" * (-data.tell() % DATA_ALIGNMENT))
            for key, entry in (("location", data_path.name), ("offset", str(data.tell())), ("length", str(array.nbytes))):
                tensor.external_data.add(key=key, value=entry)
            data.write(memoryview(array).cast("B"))
            initializers.append(tensor)
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(initializers)
    onnx.save_model(model, str(dest))
    return [dest, data_path]


def _name_dimensions(model: onnx.ModelProto, spec: ComponentSpec) -> None:
    """The graph's inputs and outputs carry the spec's symbolic dimension names and fixed sizes."""
    graph_io = {v.name: v for v in (*model.graph.input, *model.graph.output)}
    for tensor in (*spec.inputs, *spec.outputs):
        value = graph_io.get(tensor.name)
        if value is None:
            raise RuntimeError(f"exported graph has no {tensor.name!r}; it has {', '.join(graph_io)}")
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape):
            raise RuntimeError(f"exported {tensor.name!r} has rank {len(dims)}, spec says {tensor.pretty_shape()}")
        for proto_dim, want in zip(dims, tensor.shape, strict=True):
            if isinstance(want, str):
                proto_dim.dim_param = want
            else:
                proto_dim.dim_value = want


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints progress banners and tracer warnings that say nothing to our users; log them instead."""
    exporter_logger = logging.getLogger("torch.onnx")
    previous = exporter_logger.level
    exporter_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(_LogWriter()):
                yield
    finally:
        exporter_logger.setLevel(previous)


class _LogWriter:
    def write(self, text: str) -> int:
        if text.strip():
            log.debug("torch.onnx: %s", text.strip())
        return len(text)

    def flush(self) -> None:
        pass
