"""Quality that means something on ``shapes``: does the image show the prompt's shape, in its colour, where it asked?

The model folder (``diffship/models/shapes``, written by ``scripts/train_tiny.py``) holds the held-out prompt set
(``quality_prompts.json``: (shape, colour, position) triples the model never saw in training, each with fixed seeds)
and a classifier trained on the same synthetic images (``classifier.onnx``; its accuracy on fresh images is in
``classifier.json``). Each generated image is scored per attribute; an accuracy is quoted with its 95% Wilson
interval. ``measure_quality`` runs one case per point of a grid (steps, guidance, scheduler, precision) and adds the
seconds per image, so that quality per second can be compared across settings.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffship.core.errors import DiffshipError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "shapes"
AXES = {"steps": int, "guidance": float, "scheduler": str, "precision": str, "cache": int, "cutoff": float}
DEFAULTS: dict[str, Any] = {"steps": 20, "guidance": 4.0, "scheduler": None, "precision": "fp32", "cache": 1,
                            "cutoff": 1.0}
FEWER_FLOPS = {"cache": ("cache_interval", 1), "cutoff": ("guidance_cutoff", 1.0)}
"""Axes of the fewer-FLOPs settings: the pipeline argument each sets, and its value when off (docs/design.md, "Fewer
FLOPs: guidance schedule and feature caching"); a case leaves an axis out, or sets it off, for the usual path."""
Z95 = 1.959963984540054


class QualityError(DiffshipError):
    """The quality set-up is incomplete or a grid is malformed; the message says what to give."""


@dataclass(frozen=True)
class QualitySet:
    prompts: tuple[dict[str, Any], ...]
    scored: tuple[str, ...]
    labels: dict[str, tuple[str, ...]]
    classifier_path: Path
    classifier_accuracy: dict[str, Any]

    @classmethod
    def load(cls, folder: Path = DEFAULT_MODEL_DIR, limit: int | None = None) -> QualitySet:
        needed = [folder / name for name in ("quality_prompts.json", "classifier.json", "classifier.onnx")]
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise QualityError(f"{folder} lacks {', '.join(missing)}: give --model-dir a folder written by "
                               "scripts/train_tiny.py")
        prompts = json.loads(needed[0].read_text(encoding="utf-8"))["prompts"]
        meta = json.loads(needed[1].read_text(encoding="utf-8"))
        chosen = prompts if limit is None else prompts[: max(1, limit)]
        return cls(tuple(chosen), tuple(meta["scored"]), {k: tuple(v) for k, v in meta["outputs"].items()},
                   needed[2], meta.get("accuracy_on_new_images", {}))


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at 0% and 100%, unlike the normal approximation)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denominator = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_quality_axis(text: str) -> tuple[str, tuple[Any, ...]]:
    key, _, items = text.partition("=")
    key = key.strip()
    if key not in AXES or not items.strip():
        raise QualityError(f"{text!r}: use KEY=V1,V2,... with KEY one of {', '.join(AXES)}")
    try:
        values = tuple(AXES[key](item.strip()) for item in items.split(",") if item.strip())
    except ValueError:
        raise QualityError(f"{text!r}: values of {key} must be {AXES[key].__name__}") from None
    if key == "precision" and not set(values) <= {"fp32", "fp16", "int8"}:
        raise QualityError(f"{text!r}: precision is fp32, fp16 or int8 (int8: build-ort --precision int8 first)")
    return key, values


def grid_cases(axes: Sequence[tuple[str, tuple[Any, ...]]], fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the other settings as ``fixed``."""
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise QualityError(f"an axis is given twice: {', '.join(keys)}")
    return [{**fixed, **dict(zip(keys, values, strict=True))} for values in itertools.product(*(v for _, v in axes))]


class Scorer:
    """The classifier, on ONNX Runtime's CPU provider."""

    def __init__(self, quality_set: QualitySet) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(quality_set.classifier_path), providers=["CPUExecutionProvider"])
        self.quality_set = quality_set

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, str]]:
        """Images HxWx3 uint8 (64x64; others are resized) -> the predicted label of every attribute."""
        from PIL import Image

        batch = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.BOX))
                          if im.shape[:2] != (64, 64) else im for im in images]).astype(np.float32)
        outputs = self.session.run(None, {"images": batch.transpose(0, 3, 1, 2) / 255.0})
        names = list(self.quality_set.labels)
        return [{name: self.quality_set.labels[name][int(np.argmax(out[k]))] for name, out in zip(names, outputs, strict=True)}
                for k in range(len(images))]


def score(quality_set: QualitySet, predictions: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """Accuracy per scored attribute and for all of them at once, each with its interval."""
    prompts = quality_set.prompts[: len(predictions)]
    result: dict[str, Any] = {}
    for name in (*quality_set.scored, "all"):
        keys = quality_set.scored if name == "all" else (name,)
        correct = sum(all(p[k] == prompt[k] for k in keys) for p, prompt in zip(predictions, prompts, strict=True))
        low, high = wilson_interval(correct, len(predictions))
        result[name] = {"accuracy": correct / len(predictions), "low": low, "high": high, "correct": correct,
                        "total": len(predictions)}
    return result


def run_case(pipe: Any, quality_set: QualitySet, case: Mapping[str, Any], batch: int = 8) -> tuple[list[np.ndarray], float]:
    """The case's images for every prompt of the set (``batch`` prompts per call) and the seconds they took."""
    images: list[np.ndarray] = []
    started = time.perf_counter()
    prompts = quality_set.prompts
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        first = int(chunk[0]["seed"])
        if [int(p["seed"]) for p in chunk] != list(range(first, first + len(chunk))):
            raise QualityError("quality prompts need consecutive seeds (a call's images take seed, seed+1, ...)")
        result = pipe([p["prompt"] for p in chunk], num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                      scheduler=case.get("scheduler"), seed=first, **fewer_flops(case))
        images += [np.asarray(image) for image in result.images]
    return images, time.perf_counter() - started


def measure_quality(
    open_pipeline: Callable[[str], Any], quality_set: QualitySet, cases: Sequence[Mapping[str, Any]],
    progress: Callable[[str], None] = lambda line: None, keep_images: Callable[[dict[str, Any], list[np.ndarray]], None]
    | None = None,
) -> dict[str, Any]:
    """Score every case. ``open_pipeline(precision)`` opens the package (one pipeline per precision, reused)."""
    scorer = Scorer(quality_set)
    rows = []
    with _pipelines(open_pipeline) as pipeline_for:
        for index, case in enumerate(cases, 1):
            pipe = pipeline_for(case["precision"])
            images, seconds = run_case(pipe, quality_set, case)
            scores = score(quality_set, scorer.predict(images))
            per_image = seconds / len(images)
            row = {**case, "scheduler": case.get("scheduler") or pipe.scheduler_config.get("_class_name"),
                   "scores": scores, "seconds_per_image": per_image,
                   "quality_per_second": scores["all"]["accuracy"] / per_image}
            rows.append(row)
            if keep_images is not None:
                keep_images(row, images)
            progress(f"case {index}/{len(cases)}: {describe_case(row)}: all three {scores['all']['accuracy']:.1%} "
                     f"({per_image * 1000:.0f} ms/image)")
    chance = {name: 1 / len(quality_set.labels[name]) for name in quality_set.scored}
    chance["all"] = math.prod(chance.values())
    return {"prompts": len(quality_set.prompts), "scored": list(quality_set.scored), "chance": chance,
            "classifier_accuracy": quality_set.classifier_accuracy, "cases": rows}


@contextmanager
def _pipelines(open_pipeline: Callable[[str], Any]) -> Iterator[Callable[[str], Any]]:
    opened: dict[str, Any] = {}

    def pipeline_for(precision: str) -> Any:
        if precision not in opened:
            opened[precision] = open_pipeline(precision)
            opened[precision]("warm-up", num_inference_steps=1, seed=0)  # sessions and arenas, outside the timing
        return opened[precision]

    try:
        yield pipeline_for
    finally:
        for pipe in opened.values():
            pipe.close()


def fewer_flops(case: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline arguments of the case's fewer-FLOPs axes that are on (none when all are off)."""
    return {argument: case[key] for key, (argument, off) in FEWER_FLOPS.items() if case.get(key, off) != off}


def _fewer_flops_label(row: Mapping[str, Any]) -> str:
    return "".join(f", {key} {row[key]:g}" for key, (_, off) in FEWER_FLOPS.items() if row.get(key, off) != off)


def describe_case(row: Mapping[str, Any]) -> str:
    return f"{row['scheduler']} {row['steps']} steps, guidance {row['guidance']:g}, {row['precision']}" + \
        _fewer_flops_label(row)


def format_quality_table(result: Mapping[str, Any]) -> str:
    from diffship.runtime.tables import format_table

    scored = result["scored"]
    # The fewer-FLOPs columns only where some case sets them: the usual table stays as it was.
    extra = [key for key, (_, off) in FEWER_FLOPS.items() if any(r.get(key, off) != off for r in result["cases"])]
    header = ["scheduler", "steps", "guidance", "precision", *extra, *scored, "all three", "ms / image", "all / s"]

    def cell(entry: Mapping[str, float]) -> str:
        return f"{entry['accuracy']:.0%} [{entry['low']:.0%}-{entry['high']:.0%}]"

    rows = [[r["scheduler"], r["steps"], f"{r['guidance']:g}", r["precision"],
             *(f"{r.get(key, FEWER_FLOPS[key][1]):g}" for key in extra),
             *(cell(r["scores"][name]) for name in scored), cell(r["scores"]["all"]),
             f"{r['seconds_per_image'] * 1000:.0f}", f"{r['quality_per_second']:.1f}"] for r in result["cases"]]
    return format_table(header, rows)


@dataclass
class SampleSheet:
    """The first ``per_case`` images of every case, gathered during ``measure_quality`` (pass ``keep`` as its
    ``keep_images``) for one contact sheet: a row per case, a column per prompt."""

    per_case: int = 8
    rows: list[tuple[str, list[np.ndarray]]] = field(default_factory=list)

    def keep(self, row: Mapping[str, Any], images: Sequence[np.ndarray]) -> None:
        label = f"{row['scheduler']} {row['steps']} g{row['guidance']:g} {row['precision']}" + _fewer_flops_label(row)
        self.rows.append((label, list(images[: self.per_case])))

    def render(self, quality_set: QualitySet) -> np.ndarray:
        """The sheet, HxWx3 uint8; a case with fewer images than the widest row is padded with black cells."""
        from diffship.runtime.images import contact_sheet

        width = max(len(images) for _, images in self.rows)
        cells = [images + [np.zeros_like(images[0])] * (width - len(images)) for _, images in self.rows]
        return contact_sheet(cells, [label for label, _ in self.rows],
                             [p["prompt"][:24] for p in quality_set.prompts[:width]])


def write_quality_report(result: Mapping[str, Any], samples: SampleSheet, quality_set: QualitySet,
                         out_dir: Path) -> list[Path]:
    """``quality.json`` (every figure), ``samples.png`` (the sheet) and, when steps or guidance vary, ``quality.png``
    (``plot_quality``) in ``out_dir``; the paths written."""
    from diffship.core.files import write_json_atomic
    from diffship.runtime.images import save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "quality.json", result)
    save_png(samples.render(quality_set), out_dir / "samples.png", {"cases": [label for label, _ in samples.rows]})
    plot = plot_quality(result, out_dir / "quality.png")
    return [out_dir / "quality.json", out_dir / "samples.png", *([plot] if plot else [])]


def plot_quality(result: Mapping[str, Any], path: Path) -> Path | None:
    """Accuracy per scored attribute and for all three against the first numeric axis that varies (steps, else
    guidance), one line per other setting, 95% intervals as error bars."""
    from diffship.bench.plots import pyplot

    cases = result["cases"]
    varying = [key for key in ("steps", "guidance") if len({c[key] for c in cases}) > 1]
    if not varying:
        return None
    x_key = varying[0]
    series: dict[str, list[Mapping[str, Any]]] = {}
    for case in cases:
        label = ", ".join(f"{k} {case.get(k)}" for k in ("scheduler", "steps", "guidance", "precision", *FEWER_FLOPS)
                          if k != x_key and len({c.get(k) for c in cases}) > 1) or "all cases"
        series.setdefault(label, []).append(case)
    panels = [*result["scored"], "all"]
    plt = pyplot()
    figure, axes_row = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharey=True)
    for axes, panel in zip(axes_row, panels, strict=True):
        for label, rows in series.items():
            rows = sorted(rows, key=lambda r: r[x_key])
            entries = [r["scores"][panel] for r in rows]
            accuracy = [e["accuracy"] for e in entries]
            spread = [[max(0.0, a - e["low"]) for a, e in zip(accuracy, entries, strict=True)],
                      [max(0.0, e["high"] - a) for a, e in zip(accuracy, entries, strict=True)]]
            axes.errorbar([r[x_key] for r in rows], accuracy, yerr=spread, marker="o", capsize=3, label=label)
        values = sorted({c[x_key] for c in cases})
        if x_key == "steps":
            axes.set_xscale("log", base=2)
        axes.set_xticks(values, [f"{v:g}" for v in values])
        if panel in result.get("chance", {}):
            axes.axhline(result["chance"][panel], color="grey", linestyle=":", label="chance")
        axes.set_xlabel(x_key)
        axes.set_title("shape, colour and position" if panel == "all" else panel)
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
    axes_row[0].set_ylabel(f"accuracy, 95% CI ({result['prompts']} held-out prompts)")
    axes_row[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
