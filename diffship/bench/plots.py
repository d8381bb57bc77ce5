"""PNG plots of a benchmark: latency against steps, and where the time of one generation goes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffship.core.errors import require

STAGE_COLOURS = {
    "tokenize": "#8c564b",
    "text_encoder": "#9467bd",
    "unet": "#1f77b4",
    "scheduler_and_loop": "#ff7f0e",
    "vae_encode": "#17becf",
    "vae_decode": "#2ca02c",
}


def check_plotting(purpose: str) -> None:
    """Refuse, before any work, a run whose plots cannot be drawn (matplotlib is the ``bench`` extra)."""
    require("matplotlib", purpose)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for contender in sorted({r["contender"] for r in summary}):
        rows = sorted((r for r in summary if r["contender"] == contender), key=lambda r: r["steps"])
        steps = [r["steps"] for r in rows]
        medians = [r["median_s"] for r in rows]
        spread = [[m - r["min_s"] for m, r in zip(medians, rows, strict=True)],
                  [r["max_s"] - m for m, r in zip(medians, rows, strict=True)]]
        axes.errorbar(steps, medians, yerr=spread, marker="o", capsize=3, label=contender)
    axes.set_xticks(sorted({r["steps"] for r in summary}))
    axes.set_xlabel("denoising steps")
    axes.set_ylabel("end-to-end seconds (median, min-max)")
    axes.set_title("latency vs steps (lower is better)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_stages(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    top = max(r["steps"] for r in summary)
    rows = sorted((r for r in summary if r["steps"] == top), key=lambda r: r["contender"])
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.7 * len(rows)))
    for index, row in enumerate(rows):
        left = 0.0
        for stage, colour in STAGE_COLOURS.items():
            seconds = max(row["stages_median_s"].get(stage, 0.0), 0.0)
            axes.barh(index, seconds, left=left, color=colour, label=stage if index == 0 else None)
            left += seconds
    axes.set_yticks(range(len(rows)), [r["contender"] for r in rows], fontsize=8)
    axes.set_xlabel(f"seconds for one image at {top} steps (median)")
    axes.set_title("where the time goes")
    axes.legend(fontsize=8, ncol=3, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
