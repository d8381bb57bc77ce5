"""Which prompt words does a trained UNet listen to? Swap one word of a prompt and measure how far the predicted noise
moves, at a few timesteps, from the same noisy latents.

    python scripts/probe_prompt_words.py --model diffship/models/shapes

A word the model follows moves the prediction by several percent; one it ignores by a fraction of a percent. This is
how the committed ``shapes`` model was found to ignore its background and position words (docs/design.md, "The
shapes model and the quality metric"): a check to run on a training run before spending an hour on the quality grid.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PROMPT = "a large red circle on a yellow background, top left"
SWAPS = {
    "colour": ("red", "blue"),
    "shape": ("circle", "star"),
    "size": ("large", "small"),
    "background": ("yellow background", "blue background"),
    "position": ("top left", "bottom right"),
}
TIMESTEPS = (999, 600, 200)


@dataclass(frozen=True)
class WordEffect:
    attribute: str
    swap: tuple[str, str]
    relative_change: dict[int, float]
    """Per timestep: |eps(swapped) - eps(prompt)| / |eps(prompt)|."""


def probe(model: Path, prompt: str = PROMPT, swaps: dict[str, tuple[str, str]] = SWAPS,
          timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 0, batch: int = 4) -> list[WordEffect]:
    for attribute, (old, _new) in swaps.items():
        if old not in prompt:
            raise ValueError(f"{attribute}: {old!r} is not in the prompt {prompt!r}")
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval()
    unet = UNet2DConditionModel.from_pretrained(str(model / "unet")).eval()
    size = unet.config.sample_size
    latents = torch.randn(batch, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))

    def predicted_noise(text: str) -> dict[int, torch.Tensor]:
        ids = tokenizer([text] * batch, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            states = text_encoder(ids).last_hidden_state
            return {t: unet(latents, torch.full((batch,), t), states).sample for t in timesteps}

    reference = predicted_noise(prompt)
    effects = []
    for attribute, (old, new) in swaps.items():
        swapped = predicted_noise(prompt.replace(old, new))
        effects.append(WordEffect(attribute, (old, new), {
            t: float((swapped[t] - reference[t]).norm() / reference[t].norm()) for t in timesteps}))
    return effects


def format_effects(effects: list[WordEffect]) -> str:
    timesteps = list(effects[0].relative_change)
    lines = [f"{'word swapped':<52}" + "".join(f"{f't={t}':>10}" for t in timesteps)]
    for effect in effects:
        label = f"{effect.attribute}: {effect.swap[0]} -> {effect.swap[1]}"
        lines.append(f"{label:<52}" + "".join(f"{effect.relative_change[t]:>10.2%}" for t in timesteps))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a diffusers folder (text_encoder, tokenizer, unet)")
    parser.add_argument("--prompt", default=PROMPT, help="the prompt whose words are swapped one at a time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noisy latents the UNet is probed with")
    args = parser.parse_args(argv)
    if not (args.model / "unet").is_dir():
        parser.error(f"{args.model}: not a diffusers folder with a unet/ (try diffship/models/shapes)")
    try:
        effects = probe(args.model, args.prompt, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    print(f"relative change of the predicted noise when one word of {args.prompt!r} is swapped:")
    print(format_effects(effects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
