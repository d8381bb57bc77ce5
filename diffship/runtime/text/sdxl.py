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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from diffship.core.families.sdxl import XLConstants
from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import run_engine
from diffship.runtime.text.base import Conditioning, Size, read_tokenizer
from diffship.runtime.timing import StageTimer
from diffship.runtime.tokenizer import CLIPTokenizer

if TYPE_CHECKING:
    from diffship.runtime.requests import Request

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

    def describe(self) -> dict[str, Any]:
        return {"micro_conditioning": {k: v for k, v in asdict(self).items() if v is not None}}


PAIRS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
         "negative_crops_coords_top_left", "negative_target_size")
SCORES = ("aesthetic_score", "negative_aesthetic_score")
MICRO_ARGUMENTS = PAIRS + SCORES


def check_micro_conditioning(given: Mapping[str, Any], refiner: bool) -> MicroConditioning:
    """The call's micro-conditioning, checked: pairs of integers (sizes positive, crop corners >= 0), finite scores;
    an error when a base model is given an aesthetic score (refiners only) or a refiner a target size."""
    present = {name: value for name, value in given.items() if value is not None}
    unknown = sorted(set(present) - set(MICRO_ARGUMENTS))
    if unknown:
        raise PipelineInputError(f"{', '.join(unknown)}: not an SDXL argument (SDXL takes {', '.join(MICRO_ARGUMENTS)})")
    checked: dict[str, Any] = {}
    for name in PAIRS:
        if name in present:
            checked[name] = _pair(name, present[name], low=0 if "crops" in name else 1)
    for name in SCORES:
        if name in present:
            if not refiner:
                raise PipelineInputError(f"{name} conditions the SDXL refiner; this is a base model, which reads "
                                         "target sizes instead")
            value = present[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise PipelineInputError(f"{name} must be a finite number (diffusers' default "
                                         f"{AESTHETIC_SCORE if name == 'aesthetic_score' else NEGATIVE_AESTHETIC_SCORE})"
                                         f", got {value!r:.60}")
            checked[name] = float(value)
    if refiner:
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


class XLTextSide:
    """Both tokenizers and encoders of an SDXL package (the refiner: the second alone): prompts in, the UNet's
    conditioning out."""

    def __init__(self, xl: XLConstants, encoders: Sequence[str], tokenizers: Sequence[CLIPTokenizer],
                 refiner: bool) -> None:
        self.xl = xl
        self.encoders = tuple(encoders)
        self.tokenizers = tuple(tokenizers)
        self.refiner = refiner
        """The refiner's micro-conditioning: an aesthetic score where the base model has a target size."""

    @classmethod
    def open_base(cls, package: ModelPackage) -> XLTextSide:
        return cls._open(package, refiner=False)

    @classmethod
    def open_refiner(cls, package: ModelPackage) -> XLTextSide:
        return cls._open(package, refiner=True)

    @classmethod
    def _open(cls, package: ModelPackage, refiner: bool) -> XLTextSide:
        encoders = package.constants.text_encoders
        return cls(XLConstants.of(package.constants), [e.component for e in encoders],
                   [read_tokenizer(package, e.tokenizer) for e in encoders], refiner)

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """The tokenizer prompts are read with first (the refiner's is its only one)."""
        return self.tokenizers[0]

    def check(self, given: Mapping[str, Any], image_task: bool, long_prompts: bool) -> MicroConditioning:
        micro = check_micro_conditioning(given, self.refiner)
        if long_prompts:
            raise PipelineInputError("long_prompts is not available for SDXL packages yet; prompts are cut at "
                                     f"{self.tokenizer.max_length - 2} tokens")
        if image_task and given.get("negative_crops_coords_top_left") is not None and not self.refiner:
            raise PipelineInputError("negative_crops_coords_top_left: SDXL image-to-image with a base model conditions "
                                     "both sides on crops_coords_top_left (as diffusers' "
                                     "StableDiffusionXLImg2ImgPipeline does); leave it out")
        return micro

    def encode(self, engines: Mapping[str, EngineBase], request: Request, image_task: bool,
               timer: StageTimer) -> tuple[Conditioning, Conditioning | None]:
        """(conditional, unconditional or None) UNet conditioning, one row per image, prompt-major."""
        micro = request.text_options
        assert isinstance(micro, MicroConditioning)
        with timer.stage("text_encoder"):
            hidden, pooled = self._encode(engines, request.prompts)
            positive_ids, negative_ids = micro.time_ids(request.height, request.width, self.refiner, image_task)
            cond = self._rows(hidden, pooled, positive_ids, request.images_per_prompt)
            if not request.guided:
                return cond, None
            if request.negative_prompts is None and self.xl.force_zeros_for_empty_prompt:
                uncond_hidden, uncond_pooled = np.zeros_like(hidden), np.zeros_like(pooled)
            else:
                uncond_hidden, uncond_pooled = self._encode(engines, request.negative_prompts
                                                            or [""] * len(request.prompts))
            return cond, self._rows(uncond_hidden, uncond_pooled, negative_ids, request.images_per_prompt)

    def _encode(self, engines: Mapping[str, EngineBase], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(every encoder's hidden states side by side [n, 77, sum of widths], the last one's pooled prompt
        [n, pooled])."""
        hidden, pooled = [], None
        for component, tokenizer in zip(self.encoders, self.tokenizers, strict=True):
            outputs = run_engine(engines[component], {"input_ids": tokenizer.encode(texts).input_ids})
            hidden.append(outputs["hidden_states"])
            pooled = outputs.get("text_embeds", pooled)
        assert pooled is not None
        return np.concatenate(hidden, axis=-1), pooled

    @staticmethod
    def _rows(hidden: np.ndarray, pooled: np.ndarray, time_ids: np.ndarray, images_per_prompt: int) -> Conditioning:
        rows = len(hidden) * images_per_prompt
        return {
            "encoder_hidden_states": np.repeat(hidden, images_per_prompt, axis=0),
            "text_embeds": np.repeat(pooled, images_per_prompt, axis=0),
            "time_ids": np.repeat(time_ids[None], rows, axis=0),
        }
