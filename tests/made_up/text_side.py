"""The made-up family's text side (runtime, numpy): the CLIP tokenizer, the text encoder, and a mean over the prompt's
tokens, so the UNet reads one vector per image."""

from __future__ import annotations

from collections.abc import Mapping
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


class PooledTextSide:
    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, package: ModelPackage) -> PooledTextSide:
        return cls(read_tokenizer(package, package.constants.text_encoder("text_encoder").tokenizer))

    def check(self, given: Mapping[str, Any], image_task: bool, long_prompts: bool) -> TextOptions | None:
        present = sorted(name for name, value in given.items() if value is not None)
        if present or long_prompts:
            raise PipelineInputError(f"the {NAME} family takes none of {', '.join(present) or 'long_prompts'}")
        return None

    def encode(self, engines: Mapping[str, EngineBase], request: Request, image_task: bool,
               timer: StageTimer) -> tuple[Conditioning, Conditioning | None]:
        with timer.stage("text_encoder"):
            cond = self.pool(engines, request.prompts)
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
