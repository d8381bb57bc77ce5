"""Per-stage wall-clock timings of one generation (tokenize, text encoder, every UNet step, scheduler, VAE encode and
decode)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Timings:
    tokenize: float = 0.0
    text_encoder: float = 0.0
    unet_steps: list[float] = field(default_factory=list)
    """Seconds of each UNet step (one or more engine calls: the guided batch, split if the engine caps it)."""
    scheduler: float = 0.0
    """scale_model_input + step + noise draws, summed over steps."""
    vae_encode: float = 0.0
    """Image tasks: preprocessing done, the VAE encoder runs and the starting latents are made."""
    vae_decode: float = 0.0
    total: float = 0.0

    @property
    def unet(self) -> float:
        return sum(self.unet_steps)

    @property
    def other(self) -> float:
        """Time in none of the stages: validation, latents, CFG arithmetic, image conversion, loop overhead."""
        return self.total - sum(self.stage_seconds().values())

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage; ``vae_encode`` only where an image was encoded (image-to-image, inpainting)."""
        return {
            "tokenize": self.tokenize,
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "scheduler": self.scheduler,
            **({"vae_encode": self.vae_encode} if self.vae_encode else {}),
            "vae_decode": self.vae_decode,
        }

    def add(self, other: Timings) -> Timings:
        """The sum of two generations' timings (for grids and batches)."""
        return Timings(
            tokenize=self.tokenize + other.tokenize,
            text_encoder=self.text_encoder + other.text_encoder,
            unet_steps=self.unet_steps + other.unet_steps,
            scheduler=self.scheduler + other.scheduler,
            vae_encode=self.vae_encode + other.vae_encode,
            vae_decode=self.vae_decode + other.vae_decode,
            total=self.total + other.total,
        )


class StageTimer:
    """Accumulates ``with timer.stage(name)`` blocks into a Timings."""

    def __init__(self) -> None:
        self.timings = Timings()
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            if name == "unet":
                self.timings.unet_steps.append(elapsed)
            else:
                setattr(self.timings, name, getattr(self.timings, name) + elapsed)

    def finish(self) -> Timings:
        self.timings.total = time.perf_counter() - self._started
        return self.timings


def peak_rss_bytes() -> int:
    """This process's peak resident memory since exec (VmHWM; ru_maxrss would include a parent's at fork)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
