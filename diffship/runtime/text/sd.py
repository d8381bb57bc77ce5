"""SD 1.x / 2.x's text side: one CLIP text encoder; its last hidden states are what the UNet reads.

Matches diffusers' ``StableDiffusionPipeline.encode_prompt`` (the negative prompt, or "", encoded when guided; each
prompt's row repeated for its images). Opt-in long prompts read the web UI's weighting syntax in 75-token chunks
(``runtime/prompts.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import run_engine
from diffship.runtime.prompts import PromptEncoder
from diffship.runtime.text.base import Conditioning, TextOptions, read_tokenizer
from diffship.runtime.text.sdxl import MICRO_ARGUMENTS
from diffship.runtime.timing import StageTimer
from diffship.runtime.tokenizer import CLIPTokenizer

if TYPE_CHECKING:
    from diffship.runtime.requests import Request

log = logging.getLogger(__name__)

ENCODER = "text_encoder"


def refuse_extra_arguments(given: Mapping[str, Any]) -> None:
    """SD 1.x/2.x take no family arguments: not SDXL's micro-conditioning (its size, crop and aesthetic-score
    arguments), nor any other."""
    present = sorted(name for name, value in given.items() if value is not None)
    micro = [name for name in present if name in MICRO_ARGUMENTS]
    if micro:
        raise PipelineInputError(f"{', '.join(micro)}: SDXL micro-conditioning, and this package is not an SDXL "
                                 "model (it reads no time_ids)")
    if present:
        raise PipelineInputError(f"{', '.join(present)}: not an argument this package's family (SD 1.x/2.x) takes")


class SDTextSide:
    """The tokenizer and the text encoder: prompts -> ``encoder_hidden_states``."""

    def __init__(self, tokenizer: CLIPTokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, package: ModelPackage) -> SDTextSide:
        return cls(read_tokenizer(package, package.constants.text_encoder(ENCODER).tokenizer))

    def check(self, given: Mapping[str, Any], image_task: bool, long_prompts: bool) -> TextOptions | None:
        refuse_extra_arguments(given)
        return None

    def encode(self, engines: Mapping[str, EngineBase], request: Request, image_task: bool,
               timer: StageTimer) -> tuple[Conditioning, Conditioning | None]:
        negatives = request.negative_prompts or [""] * len(request.prompts)
        if request.long_prompts:
            with timer.stage("text_encoder"):
                cond, uncond = self._encode_long(engines, request.prompts, negatives if request.guided else None,
                                                 request)
        else:
            with timer.stage("tokenize"):
                cond_ids = self._tokenize(request.prompts)
                uncond_ids = self._tokenize(negatives) if request.guided else None
            with timer.stage("text_encoder"):
                cond, uncond = self._encode_text(engines[ENCODER], cond_ids, uncond_ids, request.images_per_prompt)
        return {"encoder_hidden_states": cond}, None if uncond is None else {"encoder_hidden_states": uncond}

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer.encode(texts)
        for text, dropped in zip(texts, batch.truncated, strict=True):
            if dropped:
                log.warning(
                    "prompt truncated: the text encoder reads %d tokens, %d were dropped from %r",
                    self.tokenizer.max_length, dropped, text if len(text) < 80 else text[:77] + "...",
                )
        return batch.input_ids

    @staticmethod
    def _encode_text(encoder: EngineBase, cond_ids: np.ndarray, uncond_ids: np.ndarray | None,
                     images_per_prompt: int) -> tuple[np.ndarray, np.ndarray | None]:
        ids = cond_ids if uncond_ids is None else np.concatenate([uncond_ids, cond_ids])
        hidden = run_engine(encoder, {"input_ids": ids})["last_hidden_state"]
        # diffusers repeats each prompt's embedding num_images_per_prompt times in place (prompt-major).
        hidden = np.repeat(hidden, images_per_prompt, axis=0)
        if uncond_ids is None:
            return hidden, None
        uncond, cond = np.split(hidden, 2)
        return cond, uncond

    def _encode_long(self, engines: Mapping[str, EngineBase], prompts: list[str], negatives: list[str] | None,
                     request: Request) -> tuple[np.ndarray, np.ndarray | None]:
        """Prompts of any length, weighted (runtime/prompts.py); both sides padded to the same number of windows."""
        encoder = PromptEncoder(
            self.tokenizer, lambda ids: run_engine(engines[ENCODER], {"input_ids": ids})["last_hidden_state"],
            request.prompt_weighting)
        counts = [encoder.chunk_count(p) for p in [*prompts, *(negatives or [])]]
        self._check_text_length(engines["unet"], max(counts) * self.tokenizer.max_length)
        cond = np.repeat(encoder.encode_batch(prompts, max(counts)), request.images_per_prompt, axis=0)
        if negatives is None:
            return cond, None
        return cond, np.repeat(encoder.encode_batch(negatives, max(counts)), request.images_per_prompt, axis=0)

    def _check_text_length(self, unet: EngineBase, length: int) -> None:
        spec = unet.spec.input("encoder_hidden_states")
        high = spec.shape[1] if isinstance(spec.shape[1], int) else None
        if unet.profile is not None:
            high = unet.profile.shapes["encoder_hidden_states"][2][1]
        window = self.tokenizer.max_length
        if high is not None and length > high:
            why = ("this package's UNet was exported for one window; re-export it with this version for long prompts"
                   if isinstance(spec.shape[1], int) else "its engine was built for at most this many; rebuild with "
                   "--prompt-chunks 1-N for longer prompts")
            raise PipelineInputError(
                f"the prompt needs {length // window} text windows of {window} tokens ({length // window * (window - 2)}"
                f" tokens), the UNet takes at most {high // window}: {why}")
