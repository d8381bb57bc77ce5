"""The made-up family's exporter wrapper (torch): one module per component with exactly the contract's inputs and
outputs, and the constants."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from diffship.core.specs import PipelineConstants
from diffship.exporter.families import register_family_exporter
from diffship.exporter.sources import SourceError, SourceModels
from diffship.exporter.vocab import write_clip_tokenizer
from tests.fakes import CONFIGS
from tests.made_up.description import CONSTANTS, NAME


class TextEncoder(nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed, self.mix = nn.Embedding(vocab, width), nn.Linear(width, width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.embed(input_ids)))


class UNet(nn.Module):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv, self.prompt = nn.Conv2d(channels, channels, 3, padding=1), nn.Linear(width, channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, prompt_vector: torch.Tensor) -> torch.Tensor:
        time = (timestep / 1000.0)[:, None, None, None]
        return 0.3 * self.conv(sample) + self.prompt(prompt_vector)[:, :, None, None] + 0.1 * time * sample


class Decoder(nn.Module):
    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.conv, self.factor = nn.Conv2d(channels, 3, 1), factor

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.interpolate(self.conv(latent_sample), scale_factor=float(self.factor), mode="nearest"))


class PooledToyExporter:
    pipeline_classes: tuple[str, ...] = ()

    def family_of_folder(self, folder: Path, index: Any) -> str:
        raise SourceError(f"{NAME} has no diffusers folders")

    def text_encoder_class(self, component: str) -> str:
        raise SourceError(f"{NAME} has no transformers text encoder")

    def boundary_module(self, component: str, source: SourceModels, clip_skip: int = 0) -> nn.Module:
        modules = {"text_encoder": source.text_encoders.get("text_encoder"), "unet": source.unet,
                   "vae_decoder": source.vae}
        return modules[component].eval()

    def adapter_root(self, component: str, source: SourceModels) -> nn.Module | None:
        return None

    def derive_constants(self, source: SourceModels) -> PipelineConstants:
        return CONSTANTS

    def max_clip_skip(self, source: SourceModels) -> int:
        return 0

    def reference_pipeline(self, source: SourceModels, task: str) -> Any:
        raise SourceError(f"diffusers has no {NAME} pipeline")


def make_source(seed: int = 0) -> SourceModels:
    """Seeded random modules of the made-up family, as a source the exporter takes."""
    import json

    torch.manual_seed(seed)
    width, channels = CONSTANTS.text_encoders[0].hidden_size, CONSTANTS.latent_channels
    scratch = tempfile.TemporaryDirectory(prefix="made-up-source-")
    tokenizer_config = json.loads((CONFIGS / "tiny" / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = write_clip_tokenizer(Path(scratch.name) / "tokenizer", tokenizer_config)
    scheduler = Path(scratch.name) / "scheduler_config.json"
    scheduler.write_text((CONFIGS / "tiny" / "scheduler_config.json").read_text(encoding="utf-8"), encoding="utf-8")
    return SourceModels(
        family=NAME, text_encoders={"text_encoder": TextEncoder(49408, width).eval()}, unet=UNet(channels, width).eval(),
        vae=Decoder(channels, CONSTANTS.vae_scale_factor).eval(), tokenizers={"text_encoder": tokenizer},
        scheduler_config_path=scheduler, info={"kind": NAME, "seed": seed}, _scratch=scratch)


def register() -> None:
    register_family_exporter(NAME, PooledToyExporter())
