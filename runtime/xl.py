"""SDXL's text side: both text encoders, the pooled prompt, and the micro-conditioning numbers (``time_ids``).

Matches diffusers' ``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` (``clip_skip`` None): each
tokenizer pads with its own pad token, each encoder's penultimate hidden states are joined on the last axis, the second
encoder's projected pooled output is ``text_embeds``. With guidance and no negative prompt, a model whose pipeline
sets ``force_zeros_for_empty_prompt`` (SDXL base and Turbo do) guides against zeros, not against the encoded "".

One difference, on purpose: diffusers stacks ``[negative; positive]`` time ids once and then repeats that pair per
image, so with several images and negative micro-conditioning that differs from the positive one, its unconditional
rows get positive ids and the reverse. Here every unconditional row gets the negative ids. With one image, or equal
ids, the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.specs import PipelineConstants
from engines.base import EngineBase
from runtime.errors import PipelineInputError
from runtime.guidance import run_engine
from runtime.tokenizer import CLIPTokenizer

Conditioning = dict[str, np.ndarray]
"""What the UNet reads besides the latents and timestep, one row per image: ``encoder_hidden_states`` (and for SDXL
``text_embeds`` and ``time_ids``)."""

Size = tuple[int, int]

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5
"""diffusers' defaults for the refiner's aesthetic-score conditioning."""


@dataclass(frozen=True)
class MicroConditioning:
    """SDXL's size and crop conditioning, (height, width) and (top, left) in pixels; None: diffusers' default (the
    output size for the sizes, (0, 0) for the crop; the negative sizes default to the positive time ids)."""

    original_size: Size | None = None
    crops_coords_top_left: Size = (0, 0)
    target_size: Size | None = None
    negative_original_size: Size | None = None
    negative_crops_coords_top_left: Size = (0, 0)
    negative_target_size: Size | None = None
    aesthetic_score: float = AESTHETIC_SCORE
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE

    def time_ids(self, height: int, width: int, refiner: bool, image_task: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The (positive, negative) ``time_ids`` rows for an image of ``height`` x ``width``. ``image_task``: as
        diffusers' StableDiffusionXLImg2ImgPipeline, whose base-model negative ids default each size to the positive
        one separately and take the positive crop corner."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        positive: list[float]
        negative: list[float]
        if image_task and not refiner:
            positive = [*original, *self.crops_coords_top_left, *target]
            negative = [*(self.negative_original_size or original), *self.crops_coords_top_left,
                        *(self.negative_target_size or target)]
        elif refiner:
            positive = [*original, *self.crops_coords_top_left, self.aesthetic_score]
            negative_original = self.negative_original_size or original
            negative = [*negative_original, *self.negative_crops_coords_top_left, self.negative_aesthetic_score]
        else:
            positive = [*original, *self.crops_coords_top_left, *target]
            # diffusers uses the negative sizes only when both are given; otherwise the negative ids are the positive.
            if self.negative_original_size is not None and self.negative_target_size is not None:
                negative = [*self.negative_original_size, *self.negative_crops_coords_top_left,
                            *self.negative_target_size]
            else:
                negative = positive
        return np.asarray(positive, dtype=np.float32), np.asarray(negative, dtype=np.float32)


PAIRS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
         "negative_crops_coords_top_left", "negative_target_size")
SCORES = ("aesthetic_score", "negative_aesthetic_score")
MICRO_ARGUMENTS = PAIRS + SCORES


def check_micro_conditioning(constants: PipelineConstants, given: Mapping[str, Any]) -> MicroConditioning | None:
    """The call's micro-conditioning, checked: pairs of integers (sizes positive, crop corners >= 0), finite scores;
    an error when a package that is not SDXL is given any, or a base model an aesthetic score (refiners only)."""
    present = {name: value for name, value in given.items() if value is not None}
    if constants.time_ids is None:
        if present:
            raise PipelineInputError(f"{', '.join(sorted(present))}: SDXL micro-conditioning, and this package is "
                                     "not an SDXL model (it reads no time_ids)")
        return None
    checked: dict[str, Any] = {}
    for name in PAIRS:
        if name in present:
            checked[name] = _pair(name, present[name], low=0 if "crops" in name else 1)
    for name in SCORES:
        if name in present:
            if not constants.requires_aesthetics_score:
                raise PipelineInputError(f"{name} conditions the SDXL refiner; this is a base model, which reads "
                                         "target sizes instead")
            value = present[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise PipelineInputError(f"{name} must be a finite number (diffusers' default "
                                         f"{AESTHETIC_SCORE if name == 'aesthetic_score' else NEGATIVE_AESTHETIC_SCORE})"
                                         f", got {value!r:.60}")
            checked[name] = float(value)
    if constants.requires_aesthetics_score:
        for name in ("target_size", "negative_target_size"):
            if name in checked:
                raise PipelineInputError(f"{name} conditions the SDXL base model; this refiner reads an aesthetic "
                                         "score instead")
    return MicroConditioning(**checked)


def _pair(name: str, value: Any, low: int) -> Size:
    what = "positive integers (height, width)" if low else "integers >= 0 (top, left)"
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or len(items) != 2 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and low <= v <= 1_000_000 for v in items):
        raise PipelineInputError(f"{name} must be a pair of {what}, got {value!r:.60}")
    return int(items[0]), int(items[1])


class XLTextEncoders:
    """Both tokenizers and encoders of an SDXL package: prompts in, the UNet's conditioning out."""

    def __init__(self, constants: PipelineConstants, tokenizers: Sequence[CLIPTokenizer],
                 engines: Mapping[str, EngineBase]) -> None:
        self.constants = constants
        self.tokenizers = tuple(tokenizers)
        self.engines = engines

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hidden states of both encoders side by side [n, 77, h1 + h2], pooled prompt [n, pooled]); the refiner's
        second encoder alone."""
        second = run_engine(self.engines["text_encoder_2"], {"input_ids": self.tokenizers[1].encode(texts).input_ids})
        if not self.constants.first_text_encoder:
            return second["hidden_states"], second["text_embeds"]
        first = run_engine(self.engines["text_encoder"], {"input_ids": self.tokenizers[0].encode(texts).input_ids})
        return np.concatenate([first["hidden_states"], second["hidden_states"]], axis=-1), second["text_embeds"]

    def conditioning(
        self, prompts: list[str], negatives: list[str] | None, guided: bool, images_per_prompt: int,
        micro: MicroConditioning, height: int, width: int, image_task: bool = False,
    ) -> tuple[Conditioning, Conditioning | None]:
        """(conditional, unconditional or None) UNet conditioning, one row per image, prompt-major."""
        hidden, pooled = self.encode(prompts)
        positive_ids, negative_ids = micro.time_ids(height, width, self.constants.requires_aesthetics_score,
                                                    image_task)
        cond = self._rows(hidden, pooled, positive_ids, images_per_prompt)
        if not guided:
            return cond, None
        if negatives is None and self.constants.force_zeros_for_empty_prompt:
            uncond_hidden, uncond_pooled = np.zeros_like(hidden), np.zeros_like(pooled)
        else:
            uncond_hidden, uncond_pooled = self.encode(negatives or [""] * len(prompts))
        return cond, self._rows(uncond_hidden, uncond_pooled, negative_ids, images_per_prompt)

    @staticmethod
    def _rows(hidden: np.ndarray, pooled: np.ndarray, time_ids: np.ndarray, images_per_prompt: int) -> Conditioning:
        rows = len(hidden) * images_per_prompt
        return {
            "encoder_hidden_states": np.repeat(hidden, images_per_prompt, axis=0),
            "text_embeds": np.repeat(pooled, images_per_prompt, axis=0),
            "time_ids": np.repeat(time_ids[None], rows, axis=0),
        }
