"""What a ``cli.py bench`` run measures: its settings and its runtime contenders, shared by the in-process harness
(``bench/harness.py``) and the fresh-process cold start (``bench/coldstart.py``). Light on purpose: a cold-start child
imports it before its clock starts, so nothing here loads the runtime or an engine library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffship.engines.ort import OrtOptions

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse, highly detailed"


@dataclass(frozen=True)
class BackendChoice:
    """One runtime contender, written ``BACKEND[-PRECISION][-graphs][-exported]``: ``ort``, ``ort-fp16``,
    ``ort-fp16-graphs`` (CUDA graphs), ``ort-fp16-exported`` (the exported ONNX even where build-ort engines exist),
    ``trt``."""

    backend: str
    precision: str | None = None
    cuda_graphs: bool = False
    prebuilt: bool = True

    @classmethod
    def parse(cls, text: str) -> BackendChoice:
        from diffship.engines.backend import backend_names  # here: a cold-start child imports this module early

        name, *flags = text.strip().split("-")
        names = backend_names()
        if name not in names:
            choices = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
            raise ValueError(f"{text!r}: the backend is {choices} (e.g. ort, ort-fp16, ort-fp16-graphs, trt)")
        precision, graphs, prebuilt = None, False, True
        for flag in flags:
            if flag in ("fp32", "fp16", "int8") and precision is None:
                precision = flag
            elif flag == "graphs" and not graphs:
                graphs = True
            elif flag == "exported" and prebuilt and name == "ort":
                prebuilt = False
            else:
                raise ValueError(f"{text!r}: {flag!r} is not fp32, fp16, int8, graphs or exported (e.g. ort-fp16-graphs)")
        return cls(name, precision, graphs, prebuilt)

    def ort_options(self, device: str, threads: int | None) -> OrtOptions:
        from diffship.engines.ort import OrtOptions

        return OrtOptions(device=device, threads=threads, prebuilt=self.prebuilt, cuda_graph=self.cuda_graphs)

    def open_arguments(self, device: str, threads: int | None) -> dict[str, Any]:
        """``Pipeline.from_package``'s arguments for this contender, with ``--device`` and ``--threads`` where its
        backend takes them (TensorRT runs on the GPU and refuses both; the backend says so, not this code)."""
        common: dict[str, Any] = {"backend": self.backend, "precision": self.precision, "cuda_graphs": self.cuda_graphs}
        if self.backend == "ort":  # the ONNX Runtime contenders' own flag: the exported ONNX or build-ort's engines
            return {**common, "device": device, "threads": threads, "ort_options": self.ort_options(device, threads)}
        return {**common, **takes(self.backend, device, threads)}

    def child_arguments(self) -> list[str]:
        """This contender as ``python -m diffship.bench.coldstart runtime`` options."""
        return ["--backend", self.backend, *(["--precision", self.precision] if self.precision else []),
                *(["--cuda-graphs"] if self.cuda_graphs else []), *([] if self.prebuilt else ["--exported"])]


@dataclass(frozen=True)
class BenchSettings:
    package: Path
    height: int
    width: int
    steps: tuple[int, ...]
    repeats: int
    guidance: float = 7.5
    scheduler: str | None = None
    prompt: str = DEFAULT_PROMPT
    backends: tuple[str, ...] = ("ort",)
    threads: int | None = None
    device: str = "cpu"
    cold_start: bool = True
    seed: int = 0
    task: str = "txt2img"
    """``img2img``: both sides start from the same picture, with the same VAE draw and starting noise."""
    strength: float = 0.75


def takes(backend: str, device: str, threads: int | None) -> dict[str, Any]:
    """``device`` and ``threads`` for ``Pipeline.from_package`` where ``backend`` takes them, else nothing: a benchmark
    or parity run's ``--device`` is where ONNX Runtime runs, which a GPU-only backend refuses."""
    from diffship.engines.backend import OpenSettings, get_backend
    from diffship.engines.errors import EngineError

    try:
        get_backend(backend).options(OpenSettings(device=device, threads=threads))
    except EngineError:
        return {}
    return {"device": device, "threads": threads}
