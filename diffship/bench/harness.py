"""``cli.py bench``: runtime.Pipeline (each backend) against diffusers on the same weights, settings and latents.

Runs are interleaved (diffusers, runtime, diffusers, runtime, ...) within one process so that machine drift hits
both; each contender gets one unmeasured warm-up. Every run records its end-to-end time and per-stage breakdown;
the summary holds medians, min, max and runtime/diffusers ratios. Cold start (process start to first image),
import time and peak resident memory are measured in fresh subprocesses (bench/coldstart.py).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from diffship.bench.coldstart import ChildFigures, measure_cold_start
from diffship.bench.reference import (
    ImageDraws,
    Reference,
    reference_pipeline,
    run_reference,
    run_reference_image_task,
    task_pipeline,
)
from diffship.bench.settings import BackendChoice, BenchSettings
from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.runtime import Pipeline
from diffship.runtime.tables import format_table

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

SPREAD_WARNING = 2.0
"""A contender whose slowest run took more than this many times its fastest is flagged: its median is not to be
trusted (one CPU run saw diffusers' time for a case swing from 0.26 s to 3.6 s between runs)."""

STAGES = ("tokenize", "text_encoder", "unet", "scheduler_and_loop", "vae_encode", "vae_decode")
"""In table order; ``vae_encode`` only for image-to-image."""
TASKS = ("txt2img", "img2img")


@dataclass(frozen=True)
class Inputs:
    """What both sides of one benchmark start from: the latents (txt2img) or start noise (img2img), the VAE draw and
    the picture (img2img)."""

    latents: np.ndarray
    image_noise: np.ndarray | None = None
    image: Image | None = None

    @classmethod
    def make(cls, settings: BenchSettings, latent_channels: int, factor: int) -> Inputs:
        rng = np.random.default_rng(settings.seed)
        shape = (1, latent_channels, settings.height // factor, settings.width // factor)
        latents = rng.standard_normal(shape, dtype=np.float32)
        if settings.task == "txt2img":
            return cls(latents)
        return cls(latents, rng.standard_normal(shape, dtype=np.float32), bench_picture(settings.height, settings.width))


def bench_picture(height: int, width: int) -> Image:
    """A deterministic picture with gradients and edges, the input of image-to-image runs."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 9.0)], axis=-1)
    rgb[((y - height / 2) ** 2 + (x - width / 2) ** 2) < (min(height, width) / 4) ** 2] = (0.85, 0.3, 0.1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@dataclass
class Run:
    contender: str
    steps: int
    repeat: int
    total: float
    stages: dict[str, float]
    unet_steps: list[float]
    engine_seconds: float | None = None
    """Time inside engine calls (runtime only): total minus this is the cost of our own Python."""


@dataclass
class BenchResult:
    settings: dict[str, Any]
    machine: dict[str, Any]
    runs: list[Run]
    summary: list[dict[str, Any]]
    cold_start: dict[str, ChildFigures] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "machine": self.machine,
            "summary": self.summary,
            "cold_start": self.cold_start,
            "runs": [asdict(r) for r in self.runs],
        }


class TimedEngine(EngineBase):
    """An engine that adds the wall time of each call to a shared counter."""

    def __init__(self, inner: EngineBase, counter: list[float]) -> None:
        self.inner, self.spec, self.profile, self.counter = inner, inner.spec, inner.profile, counter

    def max_batch(self) -> int | None:
        return self.inner.max_batch()

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        try:
            return self.inner(feeds)
        finally:
            self.counter[0] += time.perf_counter() - start

    def close(self) -> None:
        self.inner.close()


class Contender(Protocol):
    name: str

    def run(self, settings: BenchSettings, steps: int, inputs: Inputs) -> Run: ...
    def close(self) -> None: ...


class RuntimeContender:
    def __init__(self, pipe: Pipeline, name: str) -> None:
        self.pipe, self.name = pipe, name
        self.engine_time = [0.0]
        self._time_engines()

    def _time_engines(self) -> None:
        """Every engine of the pipeline timed, the ones it opened since too (the VAE encoder opens on the first
        image-to-image call, which is the warm-up)."""
        self.pipe.engines = {name: engine if isinstance(engine, TimedEngine) else TimedEngine(engine, self.engine_time)
                             for name, engine in self.pipe.engines.items()}

    def run(self, settings: BenchSettings, steps: int, inputs: Inputs) -> Run:
        self._time_engines()
        self.engine_time[0] = 0.0
        task = {} if inputs.image is None else {"image": inputs.image, "strength": settings.strength,
                                                "image_noise": inputs.image_noise}
        result = self.pipe(
            settings.prompt, num_inference_steps=steps, guidance_scale=settings.guidance, scheduler=settings.scheduler,
            height=settings.height, width=settings.width, seed=settings.seed,
            **({"start_noise": inputs.latents, **task} if task else {"latents": inputs.latents}),
        )
        timings = result.timings
        stages = {
            "tokenize": timings.tokenize,
            "text_encoder": timings.text_encoder,
            "unet": timings.unet,
            "scheduler_and_loop": timings.scheduler + timings.other,
            **({"vae_encode": timings.vae_encode} if inputs.image is not None else {}),
            "vae_decode": timings.vae_decode,
        }
        return Run(self.name, steps, 0, timings.total, stages, list(timings.unet_steps), self.engine_time[0])

    def close(self) -> None:
        self.pipe.close()


class DiffusersContender:
    """diffusers' pipeline with its stages timed from the outside (wrapped methods, nothing inside changed)."""

    def __init__(self, reference: Reference, name: str) -> None:
        self.reference, self.name = reference, name
        self.synchronize: Callable[[], None] = lambda: None
        if reference.device == "cuda":
            import torch

            # torch returns before the GPU is done: a stage's time is only its own after a synchronize.
            self.synchronize = torch.cuda.synchronize

    def run(self, settings: BenchSettings, steps: int, inputs: Inputs) -> Run:
        pipe = self.reference.pipe if inputs.image is None else task_pipeline(self.reference, inpainting=False)
        clock: dict[str, float] = {"encode_prompt": 0.0, "text_encoder": 0.0, "vae_encode": 0.0, "vae_decode": 0.0}
        unet_steps: list[float] = []
        sync = self.synchronize
        patched = [
            (pipe, "encode_prompt", _timed(pipe.encode_prompt, lambda s: _add(clock, "encode_prompt", s), sync)),
            (pipe.text_encoder, "forward",
             _timed(pipe.text_encoder.forward, lambda s: _add(clock, "text_encoder", s), sync)),
            (pipe.unet, "forward", _timed(pipe.unet.forward, unet_steps.append, sync)),
            (pipe.vae, "encode", _timed(pipe.vae.encode, lambda s: _add(clock, "vae_encode", s), sync)),
            (pipe.vae, "decode", _timed(pipe.vae.decode, lambda s: _add(clock, "vae_decode", s), sync)),
        ]
        for owner, attribute, wrapper in patched:
            setattr(owner, attribute, wrapper)
        try:
            sync()
            start = time.perf_counter()
            if inputs.image is None:
                run_reference(self.reference, [settings.prompt], inputs.latents, [settings.seed], None, steps,
                              settings.guidance, settings.scheduler)
            else:
                run_reference_image_task(self.reference, [settings.prompt], inputs.image,
                                         ImageDraws(inputs.latents, inputs.image_noise), [settings.seed],
                                         strength=settings.strength, steps=steps, guidance=settings.guidance,
                                         scheduler=settings.scheduler)
            sync()
            total = time.perf_counter() - start
        finally:
            for owner, attribute, _ in patched:
                delattr(owner, attribute)
        unet = sum(unet_steps)
        stages = {
            "tokenize": clock["encode_prompt"] - clock["text_encoder"],
            "text_encoder": clock["text_encoder"],
            "unet": unet,
            **({"vae_encode": clock["vae_encode"]} if inputs.image is not None else {}),
            "vae_decode": clock["vae_decode"],
        }
        stages["scheduler_and_loop"] = total - sum(stages.values())
        return Run(self.name, steps, 0, total, stages, unet_steps)

    def close(self) -> None:
        pass


def _add(clock: dict[str, float], key: str, seconds: float) -> None:
    clock[key] += seconds


def _timed(
    function: Callable[..., Any], record: Callable[[float], None], synchronize: Callable[[], None] = lambda: None
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        synchronize()
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            synchronize()
            record(time.perf_counter() - start)

    return wrapper


def _contenders(settings: BenchSettings, package: ModelPackage) -> list[Contender]:
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    cuda = settings.device in ("cuda", "auto") and torch.cuda.is_available()
    reference = reference_pipeline(package, device="cuda" if cuda else "cpu", dtype="fp16" if cuda else "fp32")
    contenders: list[Contender] = [DiffusersContender(reference, f"diffusers (torch {reference.dtype} {reference.device})")]
    for backend in settings.backends:
        choice = BackendChoice.parse(backend)
        pipe = Pipeline.from_package(settings.package, **choice.open_arguments(settings.device, settings.threads))
        label = " ".join(["diffship", choice.backend, pipe.precision, pipe.device,
                          *(["graphs"] if choice.cuda_graphs else []), *(["exported ONNX"] if not choice.prebuilt else [])])
        contenders.append(RuntimeContender(pipe, label))
    return contenders


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = log.info) -> BenchResult:
    """The interleaved runs, then (``settings.cold_start``) the cold start in fresh processes."""
    result = run_interleaved(settings, progress)
    if settings.cold_start:
        progress("cold start: fresh processes for import, first image and peak memory")
        result.cold_start = measure_cold_start(settings, ModelPackage.open(settings.package), progress)
    return result


def bench_to_files(
    settings: BenchSettings, json_path: Path, plot_dir: Path, progress: Callable[[str], None] = log.info
) -> tuple[BenchResult, list[Path]]:
    """``run_bench`` writing as it goes: the interleaved runs' JSON and plots before the cold start begins, and the
    JSON again after each cold-start process, so a late failure (minutes or hours in) loses none of the figures
    already measured. Returns the result and the files written."""
    result = run_interleaved(settings, progress)
    written = write_outputs(result, json_path, plot_dir)
    if settings.cold_start:
        progress(f"cold start: fresh processes for import, first image and peak memory (figures so far: {json_path})")

        def record(label: str, figures: ChildFigures) -> None:
            result.cold_start[label] = figures
            write_json(result, json_path)

        measure_cold_start(settings, ModelPackage.open(settings.package), progress, record)
    return result, written


def run_interleaved(settings: BenchSettings, progress: Callable[[str], None] = log.info) -> BenchResult:
    """Warm-up, then every (steps, repeat) with the contenders interleaved (A B A B), in this process."""
    from diffship.bench.machine import describe_machine

    package = ModelPackage.open(settings.package)
    constants = package.constants
    inputs = Inputs.make(settings, constants.latent_channels, constants.vae_scale_factor)
    progress("loading diffusers and the runtime on the same weights")
    contenders = _contenders(settings, package)
    runs: list[Run] = []
    try:
        for contender in contenders:
            progress(f"warm-up: {contender.name}")
            contender.run(settings, settings.steps[0], inputs)
        total_runs = len(settings.steps) * settings.repeats * len(contenders)
        done = 0
        for steps in settings.steps:
            for repeat in range(settings.repeats):
                for contender in contenders:  # interleaved: A B A B
                    run = contender.run(settings, steps, inputs)
                    run.repeat = repeat
                    runs.append(run)
                    done += 1
                    progress(f"[{done}/{total_runs}] {steps} steps, repeat {repeat + 1}: {contender.name} {run.total:.3f}s")
    finally:
        for contender in contenders:
            contender.close()
    return BenchResult(
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        machine=describe_machine(),
        runs=runs,
        summary=summarize(runs, contenders[0].name),
    )


def summarize(runs: Sequence[Run], baseline: str) -> list[dict[str, Any]]:
    rows = []
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.contender, run.steps), []).append(run)
    medians = {key: statistics.median(r.total for r in group) for key, group in groups.items()}
    for (contender, steps), group in groups.items():
        totals = [r.total for r in group]
        row: dict[str, Any] = {
            "contender": contender,
            "steps": steps,
            "median_s": medians[contender, steps],
            "min_s": min(totals),
            "max_s": max(totals),
            "spread": max(totals) / min(totals) if min(totals) > 0 else float("inf"),
            "ratio_vs_diffusers": medians[contender, steps] / medians[baseline, steps],
            "unet_step_median_s": statistics.median(s for r in group for s in r.unet_steps),
            "stages_median_s": {stage: statistics.median(r.stages[stage] for r in group)
                                for stage in STAGES if stage in group[0].stages},
        }
        engine = [r.engine_seconds for r in group if r.engine_seconds is not None]
        if engine:
            outside = statistics.median(r.total - (r.engine_seconds or 0.0) for r in group)
            row["outside_engines_median_s"] = outside
            row["outside_engines_share"] = outside / medians[contender, steps]
        rows.append(row)
    return rows


def write_outputs(result: BenchResult, json_path: Path, plot_dir: Path) -> list[Path]:
    from diffship.bench.plots import plot_latency, plot_stages

    write_json(result, json_path)
    plot_dir.mkdir(parents=True, exist_ok=True)
    return [json_path, plot_latency(result.summary, plot_dir / "latency_vs_steps.png"),
            plot_stages(result.summary, plot_dir / "stage_breakdown.png")]


def write_json(result: BenchResult, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = json_path.with_name(f".{json_path.name}.tmp")
    temporary.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    temporary.replace(json_path)


def format_ratio(value: float) -> str:
    """A ratio that never prints as "0.00x": two decimals from 0.1 up, two significant digits below."""
    if not np.isfinite(value):
        return "inf"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def format_seconds(value: float) -> str:
    """Three decimals, or three significant digits below a millisecond (a tiny model's time is not "0.000")."""
    return f"{value:.3f}" if value >= 0.01 else f"{value:.3g}"


def spread_warnings(summary: Sequence[Mapping[str, Any]], limit: float = SPREAD_WARNING) -> list[str]:
    """One line per contender and step count whose slowest run took more than ``limit`` times its fastest."""
    return [f"warning: {r['contender']} at {r['steps']} steps: its runs took {format_seconds(r['min_s'])} to "
            f"{format_seconds(r['max_s'])} s ({format_ratio(r['max_s'] / r['min_s']) if r['min_s'] > 0 else 'inf'} "
            f"apart, more than {limit:g}x): the machine was busy or the contender unsteady; its median and ratio are "
            f"not to be trusted (rerun on a quiet machine, or with more --repeats)"
            for r in sorted(summary, key=lambda r: (r["steps"], r["contender"]))
            if r["min_s"] <= 0 or r["max_s"] / r["min_s"] > limit]


def format_tables(result: BenchResult) -> str:
    lines = []
    rows = [[str(r["steps"]), r["contender"], format_seconds(r["median_s"]), format_seconds(r["min_s"]),
             format_seconds(r["max_s"]), format_ratio(r["max_s"] / r["min_s"]) if r["min_s"] > 0 else "inf",
             format_ratio(r["ratio_vs_diffusers"]), f"{r['unet_step_median_s'] * 1000:.1f}",
             f"{100 * r['outside_engines_share']:.1f}%" if "outside_engines_share" in r else "-"]
            for r in sorted(result.summary, key=lambda r: (r["steps"], r["contender"]))]
    lines.append(format_table(["steps", "contender", "median s", "min s", "max s", "max/min", "vs diffusers",
                               "UNet ms/step", "outside engines"], rows))
    lines.extend(spread_warnings(result.summary))
    top = max(r["steps"] for r in result.summary)
    stages = [s for s in STAGES if any(s in r["stages_median_s"] for r in result.summary)]
    stage_rows = [[r["contender"], *(f"{r['stages_median_s'][s]:.3f}" for s in stages)]
                  for r in result.summary if r["steps"] == top]
    lines.append(f"\nstage breakdown at {top} steps (median seconds)")
    lines.append(format_table(["contender", *stages], stage_rows))
    if result.cold_start:
        lines.append("\ncold start (fresh process; seconds unless marked)")
        lines.append(format_cold_start(result.cold_start))
    return "\n".join(lines)


def format_cold_start(cold_start: dict[str, ChildFigures]) -> str:
    """Process start -> first image per contender, split into stages (``bench.coldstart.start_stages``), with the
    ratio to diffusers of the whole and of the start-up alone (everything but the image's own compute)."""
    def start_up(child: dict[str, Any]) -> float:
        return float(child["first_image_s"] - child.get("stages", {}).get("image_s", 0.0))

    baseline = cold_start.get("diffusers")
    rows = []
    for name, child in cold_start.items():
        stages = child.get("stages", {})
        overhead = start_up(child)
        ratios = ["-", "-"]
        if baseline is not None and name != "diffusers":
            ratios = [f"{baseline['first_image_s'] / child['first_image_s']:.1f}x",
                      f"{start_up(baseline) / overhead:.1f}x" if overhead > 0 else "-"]
        rows.append([name, *(f"{stages[k]:.2f}" if k in stages else "-"
                             for k in ("interpreter_s", "import_s", "open_s", "warm_up_s", "image_s")),
                     f"{child['first_image_s']:.2f}", f"{overhead:.2f}", *ratios,
                     f"{child['peak_rss_bytes'] / 2**30:.2f}",
                     f"{child['gpu_memory_bytes'] / 2**30:.2f}" if child.get("gpu_memory_bytes") else "-"])
    table = format_table(["contender", "interpreter", "import", "open", "first-call warm-up", "image", "total",
                          "start-up (total - image)", "speed-up vs diffusers", "start-up speed-up", "peak RSS GiB",
                          "GPU memory GiB"], rows)
    components = [[name, stage, f"{v['first_s']:.3f}", f"{v['again_s']:.3f}"]
                  for name, child in cold_start.items() for stage, v in child.get("components", {}).items()]
    if components:
        table += "\n\nfirst call vs the same call again, per stage\n" + format_table(
            ["contender", "stage", "first call s", "again s"], components)
    return table
