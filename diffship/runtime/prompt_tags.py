"""The web UI's ``<lora:NAME:WEIGHT>`` prompt tags: taken out of the prompt and applied as LoRAs from a LoRA folder,
or refused with one line, never passed to the text encoder as words (docs/design.md, "Serving").

    loras, prompts = lora_tags(["a fox <lora:pixel-art:0.8>"], lora_dir=Path("loras"))
    # prompts == ["a fox"]; loras == (LoraRequest(Path("loras/pixel-art.safetensors"), 0.8),)
    result = generate_with_tags(pipe, "a fox <lora:pixel-art:0.8>", lora_dir=Path("loras"), seed=1)

``NAME`` is a ``.safetensors`` file's name in the folder (or below it, ``styles/film``) without the suffix; ``WEIGHT``
defaults to 1. The web UI's separate text-encoder and UNet weights (``<lora:NAME:0.8:0.5>``) are refused: diffship
merges one scale into every component. ``Pipeline`` itself refuses a prompt with a tag (``refuse_tags``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.lora import LoraRequest

if TYPE_CHECKING:
    from diffship.runtime.pipeline import GenerationResult, Pipeline

TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
SUFFIX = ".safetensors"


class PromptTagError(PipelineInputError):
    """A ``<lora:...>`` tag that cannot be applied: no LoRA folder, an unknown name, a bad weight."""


@dataclass(frozen=True)
class TaggedPrompts:
    """Prompts with their tags taken out, and the LoRAs the tags named (in the order first named)."""

    prompts: tuple[str, ...]
    loras: tuple[LoraRequest, ...]


def has_tags(text: str) -> bool:
    return TAG.search(text) is not None


def refuse_tags(texts: Sequence[str], name: str = "prompt") -> None:
    """One line for a prompt that holds a tag where nothing applies it (``Pipeline`` reads prompts as words)."""
    for text in texts:
        found = TAG.search(text)
        if found is not None:
            raise PromptTagError(
                f"{name} holds the LoRA tag {found.group(0)!r:.80}, which would reach the text encoder as words: "
                f"apply it with runtime.prompt_tags.generate_with_tags(pipe, prompt, lora_dir) (cli.py generate / "
                f"serve --lora-dir), or remove it and pass loras=")


def lora_tags(prompts: Sequence[str], lora_dir: Path | None, negative_prompts: Sequence[str] = ()) -> TaggedPrompts:
    """Take the tags out of ``prompts`` and resolve them in ``lora_dir``. Every prompt of one call must name the same
    LoRAs (one set of weights runs a call); tags in a negative prompt are refused, as they would be read as words."""
    refuse_tags(negative_prompts, "negative_prompt")
    cleaned: list[str] = []
    sets: list[tuple[tuple[str, float], ...]] = []
    for text in prompts:
        found = tuple(_parse(match.group(1), match.group(0)) for match in TAG.finditer(text))
        cleaned.append(" ".join(TAG.sub(" ", text).split()) if found else text)
        sets.append(found)
    if any(sets) and len(set(sets)) > 1:
        raise PromptTagError("the prompts of one call name different <lora:...> tags; one set of LoRAs runs a call, "
                             "so give every prompt the same tags (or make separate calls)")
    named = sets[0] if sets else ()
    if not named:
        return TaggedPrompts(tuple(prompts), ())
    if lora_dir is None:
        raise PromptTagError(f"the prompt names LoRA {named[0][0]!r:.60} with a <lora:...> tag but no LoRA folder was "
                             f"given (--lora-dir, lora_dir=); give the folder, or remove the tag")
    return TaggedPrompts(tuple(cleaned), tuple(LoraRequest(_find(lora_dir, name), weight) for name, weight in named))


def generate_with_tags(pipe: Pipeline, prompt: str | Sequence[str], lora_dir: Path | None,
                       negative_prompt: str | Sequence[str] | None = None, **arguments: Any) -> GenerationResult:
    """``pipe(prompt, ...)`` with the prompt's ``<lora:...>`` tags applied on top of ``pipe``'s own LoRAs for this
    call (``Pipeline.set_loras``; the pipeline's LoRAs are put back after)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt or ())
    tagged = lora_tags(prompts, lora_dir, negatives)
    if not tagged.loras:
        return pipe(prompt, negative_prompt=negative_prompt, **arguments)
    before = pipe.loras
    pipe.set_loras([*before, *tagged.loras])
    try:
        text = tagged.prompts[0] if isinstance(prompt, str) else list(tagged.prompts)
        return pipe(text, negative_prompt=negative_prompt, **arguments)
    finally:
        pipe.set_loras(before)


def _parse(inside: str, tag: str) -> tuple[str, float]:
    parts = inside.split(":")
    name = parts[0].strip()
    if not name:
        raise PromptTagError(f"{tag}: give the LoRA's name, as in <lora:pixel-art:0.8>")
    if len(parts) > 2:
        raise PromptTagError(f"{tag}: separate text-encoder and UNet weights are not supported here (one scale "
                             f"applies to every component); write <lora:{name}:WEIGHT>")
    weight_text = parts[1].strip() if len(parts) == 2 else "1"
    try:
        weight = float(weight_text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise PromptTagError(f"{tag}: the weight must be a number, as in <lora:{name}:0.8>; got {weight_text!r:.20}")
    return name, weight


def _find(lora_dir: Path, name: str) -> Path:
    path = (lora_dir / f"{name}{SUFFIX}").resolve()
    if not path.is_relative_to(lora_dir.resolve()):
        raise PromptTagError(f"<lora:{name}>: a LoRA's name is a file in the LoRA folder, not a path out of it")
    if not path.is_file():
        known = sorted(str(p.relative_to(lora_dir))[: -len(SUFFIX)] for p in lora_dir.rglob(f"*{SUFFIX}"))
        raise PromptTagError(f"<lora:{name}>: no {name}{SUFFIX} in the LoRA folder; it has "
                             f"{', '.join(known[:20]) or 'no .safetensors files'}")
    return path
