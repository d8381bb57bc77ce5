"""``cli.py parity``: end-to-end parity of a package's runtime against diffusers, case by case, with the worst shown.

Cases are schedulers x guidance scales, each a call with several prompts (and negative prompts) from the same
injected latents. Bars (docs/design.md, "Parity bars"): fp32 ONNX Runtime: max pixel difference <= 2/255; fp16 ONNX and
TensorRT engines: PSNR >= 30 dB, always against diffusers in fp32.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from diffship.bench.reference import reference_pipeline, run_reference
from diffship.bench.settings import takes
from diffship.core.metrics import INT8_MIN_PSNR_DB, psnr, ssim
from diffship.core.package import ModelPackage
from diffship.runtime import Pipeline
from diffship.runtime.images import save_png

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = ("a red fox in the snow", "an astronaut riding a horse on the moon, highly detailed", "a bowl of ramen")
DEFAULT_NEGATIVES = ("blurry", "low quality, watermark", "")
FP32_MAX_PIXEL_DIFF = 2
LOW_PRECISION_MIN_PSNR = 30.0


@dataclass(frozen=True)
class CaseResult:
    scheduler: str
    guidance: float
    max_pixel_diff: int
    psnr_db: float
    ssim: float
    """Mean SSIM over the case's images (reported, not a bar)."""
    passed: bool
    seconds: float


@dataclass
class ParityReport:
    package: str
    backend: str
    precision: str
    bar: str
    steps: int
    size: tuple[int, int]
    cases: list[CaseResult]
    worst_image: str | None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["passed"] = self.passed
        data["cases"] = [{**asdict(c), "psnr_db": None if np.isinf(c.psnr_db) else c.psnr_db} for c in self.cases]
        return data


def parity_report(
    package_path: Path,
    schedulers: Sequence[str],
    guidance_scales: Sequence[float],
    out_dir: Path,
    steps: int = 20,
    backend: str = "ort",
    precision: str | None = None,
    height: int | None = None,
    width: int | None = None,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    negatives: Sequence[str] = DEFAULT_NEGATIVES,
    seed: int = 1234,
    device: str = "cpu",
    cuda_graphs: bool = False,
    reference_device: str = "cpu",
) -> ParityReport:
    package = ModelPackage.open(package_path)
    constants = package.constants
    height = height or constants.default_height
    width = width or constants.default_width
    pipe = Pipeline.from_package(package_path, backend=backend, precision=precision, cuda_graphs=cuda_graphs,
                                 **takes(backend, device, None))
    strict = backend == "ort" and pipe.precision == "fp32"
    min_psnr = INT8_MIN_PSNR_DB if pipe.precision == "int8" else LOW_PRECISION_MIN_PSNR
    bar = f"max pixel diff <= {FP32_MAX_PIXEL_DIFF}/255" if strict else f"PSNR >= {min_psnr:g} dB"
    reference = reference_pipeline(package, device=reference_device)
    latents = np.random.default_rng(seed).standard_normal(
        (len(prompts), constants.latent_channels, height // constants.vae_scale_factor,
         width // constants.vae_scale_factor)).astype(np.float32)
    seeds = [seed + k for k in range(len(prompts))]
    results, worst, worst_images = [], None, None
    for scheduler in schedulers:
        for guidance in guidance_scales:
            tick = time.perf_counter()
            ours = np.stack(pipe(list(prompts), negative_prompt=list(negatives), num_inference_steps=steps,
                                 guidance_scale=guidance, scheduler=scheduler, height=height, width=width,
                                 latents=latents, seed=seed).images)
            theirs = np.stack(run_reference(reference, prompts, latents, seeds, negatives, steps, guidance, scheduler))
            difference = int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max())
            quality = psnr(ours, theirs, 255.0)
            passed = difference <= FP32_MAX_PIXEL_DIFF if strict else quality >= min_psnr
            similarity = ssim(ours, theirs, 255.0)
            result = CaseResult(scheduler, guidance, difference, quality, similarity, passed, time.perf_counter() - tick)
            log.info("%-16s guidance %-5g max diff %3d/255  PSNR %6.1f dB  SSIM %.4f  %s", scheduler, guidance,
                     difference, quality, similarity, "ok" if passed else "FAIL")
            results.append(result)
            if worst is None or (difference, -quality) > (worst.max_pixel_diff, -worst.psnr_db):
                worst, worst_images = result, (ours, theirs)
    pipe.close()
    worst_path = None
    if worst is not None and worst_images is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        worst_path = out_dir / "parity-worst.png"
        save_png(side_by_side(*worst_images), worst_path, {"scheduler": worst.scheduler, "guidance": worst.guidance,
                                                            "columns": "diffship | diffusers | |difference| x 8"})
    report = ParityReport(str(package_path), backend, pipe.precision, bar, steps, (height, width), results,
                          str(worst_path) if worst_path else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "parity.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return report


def side_by_side(ours: np.ndarray, theirs: np.ndarray, amplify: int = 8) -> np.ndarray:
    """Rows of [ours | diffusers | amplified absolute difference], one row per image."""
    difference = np.clip(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)) * amplify, 0, 255).astype(np.uint8)
    rows = [np.concatenate([a, b, d], axis=1) for a, b, d in zip(ours, theirs, difference, strict=True)]
    return np.concatenate(rows, axis=0)
