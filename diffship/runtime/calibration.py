"""UNet inputs recorded from the package's own denoising runs: the calibration data of ``build-ort --precision int8``.

Static quantization fixes every activation's int8 range ahead of time, so the ranges have to come from inputs like the
ones the UNet will see: latents along real denoising trajectories (every noise level of a schedule), the guided batch
of two, and text encoder states of real prompts. Random tensors give ranges that real runs never reach and miss the
ones they do. The pipeline runs in fp32 (the package's fp32 engines), one image per prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red fox in a snowy forest, detailed, golden hour",
    "a bowl of fruit on a wooden table, oil painting",
    "a city street at night with neon signs, rain",
)


@dataclass(frozen=True)
class CalibrationPlan:
    """Which runs record the UNet's inputs: ``prompts`` x ``steps`` (each step one guided UNet call) at ``size``."""

    prompts: tuple[str, ...] = DEFAULT_PROMPTS[:2]
    steps: int = 8
    size: int | None = None
    """Image side in pixels; None: the package's default size, capped at 256 (ranges hardly depend on size)."""
    guidance: float = 7.5
    seed: int = 0

    def key(self) -> str:
        """What the recorded inputs depend on, for the build's cache key."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class _RecordingEngine:
    """Stands in for the UNet engine: keeps a copy of every feed, then runs the real engine."""

    def __init__(self, engine: Any, recorded: list[dict[str, np.ndarray]]) -> None:
        self._engine = engine
        self._recorded = recorded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __call__(self, feeds: Mapping[str, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        self._recorded.append({name: np.array(value, dtype=np.float32) for name, value in feeds.items()})
        return self._engine(feeds, *args, **kwargs)


def record_unet_inputs(
    package: Path, plan: CalibrationPlan, threads: int | None = None, progress: Callable[[str], None] | None = None
) -> list[dict[str, np.ndarray]]:
    """Run ``plan`` through the package's fp32 pipeline and return every UNet input it made, in call order."""
    from diffship.runtime.pipeline import Pipeline

    pipe = Pipeline.from_package(package, backend="ort", precision="fp32", device="cpu", threads=threads)
    recorded: list[dict[str, np.ndarray]] = []
    unet = pipe.engines["unet"]
    pipe.engines["unet"] = cast(Any, _RecordingEngine(unet, recorded))  # duck-typed: called, attributes forwarded
    try:
        height, width = (plan.size, plan.size) if plan.size else _capped_size(pipe.constants)
        for number, prompt in enumerate(plan.prompts, 1):
            pipe(prompt, height=height, width=width, num_inference_steps=plan.steps, guidance_scale=plan.guidance,
                 seed=plan.seed + number)
            if progress:
                progress(f"calibration: prompt {number}/{len(plan.prompts)} done, {len(recorded)} UNet inputs")
    finally:
        pipe.engines["unet"] = unet
        pipe.close()
    return recorded


def _capped_size(constants: Any, cap: int = 256) -> tuple[int, int]:
    """The package's default size scaled down to at most ``cap`` a side, in whole latent pixels."""
    height, width = constants.default_height, constants.default_width
    scale = min(1.0, cap / max(height, width))
    multiple = constants.vae_scale_factor
    return (max(multiple, int(height * scale) // multiple * multiple),
            max(multiple, int(width * scale) // multiple * multiple))


def prompts_from_file(path: Path) -> Sequence[str]:
    """One prompt per non-empty line."""
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return prompts


@dataclass(frozen=True)
class Calibration:
    """int8 calibration as ``engines.ort.build.build_ort_engines`` takes it: ``record`` is its ``calibration``
    callable (run only when the UNet is built, not when it is up to date) and ``key`` its ``calibration_key``."""

    record: Callable[[], list[dict[str, np.ndarray]]]
    key: str


def calibration_for(
    package: Path,
    prompts_file: Path | None = None,
    steps: int = 8,
    size: int | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """The calibration of ``build-ort --precision int8``: the prompts of ``prompts_file`` (one per line; default: two
    built-in ones) run for ``steps`` steps at ``size``. Raises ValueError when the file holds no prompts."""
    prompts = tuple(prompts_from_file(prompts_file)) if prompts_file else DEFAULT_PROMPTS[:2]
    plan = CalibrationPlan(prompts=prompts, steps=steps, size=size)
    return Calibration(lambda: record_unet_inputs(package, plan, threads, progress), plan.key())

