"""At which noise level does a trained ``shapes`` model lose the shape? Draw pictures, encode them, noise the latents
to a start timestep, denoise them back with DDIM and the prompt that describes them, decode, and let the model's
classifier say whether the shape is still the one drawn.

    python scripts/probe_shape_by_noise.py --model diffship/models/shapes

Start 0 is the VAE's round trip alone; start 999 is (nearly) generation from noise. Where accuracy drops between two
starts is the noise range in which the UNet fails to keep the outline, which is where training should look
(docs/design.md, "The shapes model and the quality metric").
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import shapes_data as data  # noqa: E402

STARTS = (0, 150, 350, 550, 750, 999)


@dataclass(frozen=True)
class ShapeRetention:
    start_timestep: int
    """The first timestep denoised (the schedule's largest at or below the asked start); 0: no noise added."""
    steps: int
    shape_accuracy: float


def probe(model: Path, starts: tuple[int, ...] = STARTS, images: int = 64, steps: int = 20, guidance: float = 2.0,
          seed: int = 0) -> list[ShapeRetention]:
    import onnxruntime as ort
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    text_encoder = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval()
    unet = UNet2DConditionModel.from_pretrained(str(model / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(model / "vae")).eval()
    scheduler = DDIMScheduler.from_pretrained(str(model / "scheduler"))
    classifier = ort.InferenceSession(str(model / "classifier.onnx"), providers=["CPUExecutionProvider"])
    scale = vae.config.scaling_factor

    pictures, scenes = data.batch(np.random.default_rng(seed), images)
    truth = np.array([scene.labels()["shape"] for scene in scenes])

    def shape_accuracy(latents: torch.Tensor) -> float:
        decoded = vae.decode(latents / scale).sample.clamp(-1, 1)
        shape_logits = classifier.run(["shape"], {"images": ((decoded + 1) / 2).numpy()})[0]
        return float((shape_logits.argmax(1) == truth).mean())

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        return text_encoder(ids).last_hidden_state

    results = []
    with torch.no_grad():
        clean = vae.encode(torch.from_numpy(pictures)).latent_dist.mean * scale
        states = torch.cat([encode([""] * images), encode([data.caption(scene) for scene in scenes])])
        scheduler.set_timesteps(steps)
        for start in starts:
            timesteps = [int(t) for t in scheduler.timesteps if t <= start]
            if start == 0 or not timesteps:
                results.append(ShapeRetention(0, 0, shape_accuracy(clean)))
                continue
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1))
            latents = scheduler.add_noise(clean, noise, torch.tensor([timesteps[0]]))
            for t in timesteps:
                unconditional, conditional = unet(torch.cat([latents, latents]), t, states).sample.chunk(2)
                guided = unconditional + guidance * (conditional - unconditional)
                latents = scheduler.step(guided, t, latents).prev_sample
            results.append(ShapeRetention(timesteps[0], len(timesteps), shape_accuracy(latents)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a shapes folder (train_tiny.py's output)")
    parser.add_argument("--images", type=int, default=64, help="pictures drawn and scored per start")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the full schedule")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.model / "classifier.onnx").is_file():
        parser.error(f"{args.model} has no classifier.onnx: pass a folder written by scripts/train_tiny.py")
    if args.images < 1 or args.steps < 1:
        parser.error("--images and --steps must be at least 1")
    results = probe(args.model, images=args.images, steps=args.steps, guidance=args.guidance, seed=args.seed)
    print(f"{args.model}: shape kept after noising to t and denoising back ({args.images} pictures, DDIM, "
          f"guidance {args.guidance:g})")
    print(f"{'start t':>8} {'steps':>6} {'shape':>7}")
    for result in results:
        print(f"{result.start_timestep:>8} {result.steps:>6} {result.shape_accuracy:>7.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
