"""What the commands show on the terminal: a step counter, the per-stage timing table, the scheduler list."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from diffship.runtime.tables import format_table

if TYPE_CHECKING:
    from diffship.runtime.timing import Timings


class StepProgress:
    """A one-line step counter on stderr (only when it is a terminal)."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()

    def __call__(self, step: int, timestep: float, latents: Any) -> None:
        if self.enabled:
            click.echo(f"\r{self.label}step {step + 1} (t={timestep:g})   ", err=True, nl=False)

    def cell(self, index: int, count: int) -> StepProgress:
        """The counter for grid cell ``index`` of ``count``."""
        self.label = f"[cell {index + 1}/{count}] "
        return self

    def done(self) -> None:
        if self.enabled:
            click.echo("\r" + " " * 60 + "\r", err=True, nl=False)


def timing_table(timings: Timings, images: int) -> str:
    """Seconds and share per stage, the UNet's per call, and the image count."""
    stages = timings.stage_seconds()
    steps = len(timings.unet_steps)
    rows = []
    for name, seconds in [*stages.items(), ("other", timings.other), ("total", timings.total)]:
        share = f"{100 * seconds / timings.total:5.1f}%" if timings.total else "-"
        note = f"{steps} UNet calls, {timings.unet / steps * 1000:.1f} ms each" if name == "unet" and steps else ""
        rows.append([name, f"{seconds:.3f}s", share, note])
    return format_table(["stage", "time", "share", ""], rows) + f"\n{images} image(s)"


def scheduler_table() -> str:
    """Every scheduler name, what it stands for in the web UI and in diffusers, and what it is for."""
    from diffship.runtime.schedulers import DESCRIPTIONS, NOT_IMPLEMENTED, SHORT_NAMES, WEB_UI_NAMES

    web_ui = {short: name for name, short in WEB_UI_NAMES.items()}
    rows = []
    for short, (class_name, overrides) in SHORT_NAMES.items():
        arguments = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
        diffusers = f"{class_name}({arguments})" if arguments else class_name
        rows.append([short, web_ui.get(short, "-"), diffusers, DESCRIPTIONS[short]])
    table = format_table(["name", "web UI name", "diffusers", "for"], rows)
    return table + "\n\nNot implemented (refused by name): " + ", ".join(NOT_IMPLEMENTED)
