"""The made-up family's text side (runtime, numpy): the CLIP tokenizer, the text encoder, and a mean over the prompt's
tokens, so the UNet reads one vector per image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import run_engine
from diffship.runtime.requests import Request
from diffship.runtime.text import Conditioning, TextOptions, read_tokenizer, register_text_side
from diffship.runtime.timing import StageTimer
from diffship.runtime.tokenizer import CLIPTokenizer
from tests.made_up.description import NAME


@dataclass(frozen=True)
class PooledOptions:
    """The made-up family's own call argument: how strongly the prompt vector speaks (``family_options``)."""

    vector_scale: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {"vector_scale": self.vector_scale}


class PooledTextSide:
    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, package: ModelPackage) -> PooledTextSide:
        return cls(read_tokenizer(package, package.constants.text_encoder("text_encoder").tokenizer))

    def check(self, given: Mapping[str, Any], image_task: bool, long_prompts: bool) -> TextOptions | None:
        present = {name: value for name, value in given.items() if value is not None}
        scale = present.pop("vector_scale", 1.0)
        if present or long_prompts:
            raise PipelineInputError(f"the {NAME} family takes none of {', '.join(sorted(present)) or 'long_prompts'}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 10:
            raise PipelineInputError(f"vector_scale must be a number in (0, 10], got {scale!r:.40}")
        return PooledOptions(float(scale))

    def encode(self, engines: Mapping[str, EngineBase], request: Request, image_task: bool,
               timer: StageTimer) -> tuple[Conditioning, Conditioning | None]:
        options = request.text_options
        assert isinstance(options, PooledOptions)
        with timer.stage("text_encoder"):
            cond = self.pool(engines, request.prompts) * np.float32(options.vector_scale)
            negatives = request.negative_prompts or [""] * len(request.prompts)
            uncond = self.pool(engines, negatives) if request.guided else None

        def rows(vectors: np.ndarray) -> Conditioning:
            return {"prompt_vector": np.repeat(vectors, request.images_per_prompt, axis=0)}

        return rows(cond), None if uncond is None else rows(uncond)

    def pool(self, engines: Mapping[str, EngineBase], texts: list[str]) -> np.ndarray:
        """Each text's hidden states averaged over its tokens (the start token and the words; not the padding)."""
        ids = self.tokenizer.encode(texts).input_ids
        hidden = run_engine(engines["text_encoder"], {"input_ids": ids})["hidden_states"]
        mask = (ids != self.tokenizer.pad_token_id)[..., None].astype(np.float32)
        return ((hidden * mask).sum(axis=1) / mask.sum(axis=1)).astype(np.float32)


def register() -> None:
    register_text_side(NAME, PooledTextSide.open)
