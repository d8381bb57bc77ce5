"""Train ``shapes``: a tiny Stable Diffusion (real CLIP tokenizer, CLIPTextModel, AutoencoderKL, UNet2DConditionModel)
that draws one coloured shape on a plain background, and the classifier that scores what it draws.

    python scripts/train_tiny.py --out diffship/models/shapes          # under an hour on 2 CPU cores (49 min here)

Stages, each logged with its progress:

1. the VAE learns to reconstruct the synthetic images (L1 + MSE with the shape's pixels weighted 10x, and a small KL
   term), with latent channel 3 held to the shape's coverage of each 4x4 pixel cell whatever the colours (the
   "objectness" channel: without it, where the shape is only shows in the latents as an interaction with its two
   colours, and the UNet never learned it; docs/shapes-training.md, "Position"); the latents' spread sets
   ``scaling_factor``, as SD's was chosen;
2. the classifier learns shape, colour, size, position and background from fresh images, half of them round-tripped
   through that VAE and all blurred a little, so that it reads generated pictures as well as drawn ones;
3. a pool of training images is drawn (held-out triples excluded, see ``scripts/shapes_data.py``) and encoded once;
4. the text encoder and UNet learn the DDPM objective under SD's scaled-linear schedule, predicting v (as SD 2.x
   does) with the loss weight capped so that the noisiest timesteps, where the layout is decided, keep full weight;
   for the first 40% of the steps half of each batch's timesteps are drawn from the noisiest fifth (then all
   uniformly), and the noise has a multi-resolution part (pyramid noise), so the model must place the shape from the
   prompt alone. Captions are dropped 10% of the time so that classifier-free guidance works; EMA weights. After
   each epoch the losses so far go to ``train-log.json``, a sample grid of the EMA weights to ``samples/``, and the
   classifier's accuracy on a fixed subset of the held-out prompts to the log, so a run that is not learning shows it
   early.

Everything is seeded and runs on a fixed number of threads, so the same seed gives the same bytes (the digest in
``training.json`` shows it). The output is a diffusers ``save_pretrained`` folder plus ``classifier.onnx``,
``classifier.json`` (label names) and ``quality_prompts.json`` (the held-out prompt set ``cli.py quality`` runs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffship.exporter.vocab import write_clip_tokenizer  # noqa: E402
from scripts import shapes_data as data  # noqa: E402

log = logging.getLogger("train_tiny")

IMAGE_SIZE = 64
TOKENIZER_CONFIG = {
    "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>", "do_lower_case": True, "errors": "replace", "add_prefix_space": False,
    "tokenizer_class": "CLIPTokenizer",
}
TEXT_ENCODER = {
    "hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 3,
    "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 32, "hidden_act": "quick_gelu",
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
UNET = {
    "sample_size": IMAGE_SIZE // 4, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64, 96),
    "layers_per_block": 1, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32,
    "attention_head_dim": 8, "norm_num_groups": 16,
}
"""No attention at 16x16 latents: it tripled the step time and the prompt's words are read at 8x8 and 4x4."""
VAE = {
    "sample_size": IMAGE_SIZE, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": (16, 32, 64), "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3, "layers_per_block": 1, "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
"""No attention in the VAE's middle block: 10% faster, and the reconstructions were no worse without it."""
OBJECTNESS_CHANNEL = 3
OBJECTNESS_AMPLITUDE = 2.5
"""Latent channel 3 (before ``scaling_factor``) is -2.5 where a 4x4 cell is all background, +2.5 where all shape."""
HIGH_TIMESTEP = 800
"""The noisiest fifth of the schedule, where half of each batch's timesteps are drawn early in training
(``--high-timestep-until``)."""
SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "clip_sample": False, "trained_betas": None,
}
EVAL_GUIDANCE = (2.0, 4.0)
"""Guidance scales of the per-epoch checks: the first also draws the sample grids."""
SAMPLE_PROMPTS = (
    "a large red circle on a white background, center", "a small blue star on a yellow background, top left",
    "a large green triangle on a black background, bottom right", "a small yellow square on a purple background, top right",
    "a large white cross on a blue background, center", "a small orange star on a green background, bottom left",
    "a large purple square on an orange background, top left", "a large black circle on a red background, bottom right",
)


class Classifier(torch.nn.Module):
    """A small CNN with one head per attribute; its input is the pipeline's output image in [0, 1], NCHW."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 3
        for width in (16, 32, 64, 64):
            layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                       torch.nn.MaxPool2d(2)]
            channels = width
        self.features = torch.nn.Sequential(*layers, torch.nn.Flatten())  # 64 x 4 x 4: position survives
        self.heads = torch.nn.ModuleDict({
            name: torch.nn.Linear(channels * 16, len(values)) for name, values in data.ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.features(images * 2 - 1)
        return tuple(self.heads[name](features) for name in data.ATTRIBUTES)


def _progress(stage: str, step: int, total: int, started: float, **values: float) -> None:
    if step % max(1, total // 20) and step != total:
        return
    elapsed = time.perf_counter() - started
    eta = elapsed / max(step, 1) * (total - step)
    extra = " ".join(f"{k} {v:.4f}" for k, v in values.items())
    log.info("%s %d/%d (%.0f s, ~%.0f s left) %s", stage, step, total, elapsed, eta, extra)


def _warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5% of the steps, then a cosine down to 5% of the peak."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * (
        0.05 + 0.475 * (1 + math.cos(math.pi * min(step, steps) / steps))))


def foreground(images: torch.Tensor) -> torch.Tensor:
    """N1HW: 1 where a pixel differs from the corner's (background) colour."""
    return ((images - images[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1).float()


def objectness_target(images: torch.Tensor) -> torch.Tensor:
    """N1hw: the shape's coverage of each latent cell, scaled to +-OBJECTNESS_AMPLITUDE."""
    return (F.avg_pool2d(foreground(images), 4) * 2 - 1) * OBJECTNESS_AMPLITUDE


def train_vae(args: argparse.Namespace, rng: np.random.Generator) -> Any:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**VAE)
    with torch.no_grad():
        # Start the posterior's log-variance low (std ~0.05): sampled latents are then close to the mean from the first
        # step, and the decoder learns shapes instead of noise. SD's VAE ends with a small variance too, which is what
        # image-to-image's latent_dist.sample() needs.
        vae.quant_conv.bias[VAE["latent_channels"]:] -= 6.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = _warmup_cosine(optimizer, args.vae_steps)
    started = time.perf_counter()
    for step in range(1, args.vae_steps + 1):
        images = torch.from_numpy(data.batch(rng, args.vae_batch)[0])
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        # A shape covers 2-10% of the picture: weighted like the background it was lost (round blurs where stars
        # should be). Pixels that differ from the corner's colour count 10x.
        weights = 1 + 9 * foreground(images)
        error = reconstruction - images
        l1 = (error.abs() * weights).mean()
        objectness = (posterior.mean[:, OBJECTNESS_CHANNEL:OBJECTNESS_CHANNEL + 1] - objectness_target(images))
        objectness_error = objectness.square().mean()
        loss = l1 + (error.square() * weights).mean() + objectness_error + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        _progress("vae", step, args.vae_steps, started, l1=l1.item(), objectness=objectness_error.item())
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(data.batch(rng, 256)[0])).latent_dist.mean
    vae.register_to_config(scaling_factor=round(float(1.0 / latents.std()), 5))
    log.info("vae scaling_factor %.5f", vae.config.scaling_factor)
    return vae


def _as_generated(images: torch.Tensor, vae: Any, rng: np.random.Generator) -> torch.Tensor:
    """What the classifier must also read: half the batch round-tripped through the VAE (its decoder is what paints
    every generated image), then a random blur and a shift of brightness and saturation for all."""
    half = len(images) // 2
    with torch.no_grad():
        decoded = vae.decode(vae.encode(images[:half]).latent_dist.mean).sample.clamp(-1, 1)
    out = torch.cat([decoded, images[half:]])
    sigma = float(rng.uniform(0.1, 1.5))
    taps = torch.exp(-torch.arange(-3, 4, dtype=torch.float32) ** 2 / (2 * sigma**2))
    taps = (taps / taps.sum()).view(1, 1, 1, 7).repeat(3, 1, 1, 1)
    out = F.conv2d(F.pad(out, (3, 3, 0, 0), mode="replicate"), taps, groups=3)
    out = F.conv2d(F.pad(out, (0, 0, 3, 3), mode="replicate"), taps.transpose(2, 3), groups=3)
    grey = out.mean(dim=1, keepdim=True)
    saturation = torch.from_numpy(rng.uniform(0.7, 1.2, (len(out), 1, 1, 1)).astype(np.float32))
    brightness = torch.from_numpy(rng.uniform(-0.1, 0.1, (len(out), 1, 1, 1)).astype(np.float32))
    return (grey + (out - grey) * saturation + brightness).clamp(-1, 1)


def _accuracy(model: Classifier, images: torch.Tensor, scenes: list[data.Scene]) -> dict[str, float]:
    with torch.no_grad():
        logits = model((images + 1) / 2)
    return {name: float((out.argmax(1) == torch.tensor([s.labels()[name] for s in scenes])).float().mean())
            for out, name in zip(logits, data.ATTRIBUTES, strict=True)}


def train_classifier(args: argparse.Namespace, rng: np.random.Generator, vae: Any) -> tuple[Classifier, dict[str, Any]]:
    model = Classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = _warmup_cosine(optimizer, args.classifier_steps)
    started = time.perf_counter()
    for step in range(1, args.classifier_steps + 1):
        images, scenes = data.batch(rng, 64)
        logits = model((_as_generated(torch.from_numpy(images), vae, rng) + 1) / 2)
        loss = sum(F.cross_entropy(out, torch.tensor([s.labels()[name] for s in scenes]))
                   for out, name in zip(logits, data.ATTRIBUTES, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        schedule.step()
        _progress("classifier", step, args.classifier_steps, started, loss=loss.item())  # type: ignore[union-attr]
    model.eval()
    images, scenes = data.batch(np.random.default_rng(args.seed + 99), args.classifier_eval)
    clean = torch.from_numpy(images)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(clean).latent_dist.mean).sample.clamp(-1, 1)
    accuracy = {"fresh_images": _accuracy(model, clean, scenes), "through_the_vae": _accuracy(model, decoded, scenes)}
    log.info("classifier accuracy on %d new images: %s", args.classifier_eval, accuracy)
    return model, accuracy


def make_pool(args: argparse.Namespace, rng: np.random.Generator, vae: Any) -> tuple[torch.Tensor, list[data.Scene]]:
    held_out = data.held_out_triples()
    latents, scenes = [], []
    started = time.perf_counter()
    chunks = args.pool // 256
    for chunk in range(1, chunks + 1):
        images, chunk_scenes = data.batch(rng, 256, exclude=held_out)
        with torch.no_grad():
            latents.append(vae.encode(torch.from_numpy(images)).latent_dist.mean * vae.config.scaling_factor)
        scenes += chunk_scenes
        _progress("pool", chunk, chunks, started)
    return torch.cat(latents), scenes


def pyramid_noise(rng: np.random.Generator, shape: tuple[int, ...], discount: float) -> torch.Tensor:
    """Gaussian noise plus Gaussian noise drawn at 1/2, 1/4, ... of the latent size and upsampled, scale k weighted
    ``discount**k``, rescaled to the batch's unit variance (multi-resolution noise). The coarse part hides the low
    frequencies (where the shape is) that plain noise leaves visible at the noisiest timesteps."""
    batch, channels, height, width = shape
    noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    if discount == 0:
        return noise
    level = 1
    while height >> level >= 2:
        coarse = torch.from_numpy(rng.standard_normal((batch, channels, height >> level, width >> level),
                                                      dtype=np.float32))
        noise += discount**level * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
        level += 1
    return noise / noise.std()  # bilinear upsampling lowers the coarse parts' variance below discount**(2k)


def shape_cell_weights(latents: torch.Tensor, weight: float) -> torch.Tensor:
    """N1hw loss weights: ``weight`` on latent cells the shape covers and their 8 neighbours (its outline), 1 elsewhere.
    The shape fills 2-10% of a picture; weighted like the background, the outline, the only thing that tells a star
    from a circle, is a few cells of the loss (the VAE's loss had the same flaw: ``train_vae``). Coverage is read off
    the clean latents' objectness channel (before ``scaling_factor``)."""
    coverage = (latents[:, OBJECTNESS_CHANNEL:OBJECTNESS_CHANNEL + 1] / OBJECTNESS_AMPLITUDE + 1) / 2
    near_shape = F.max_pool2d((coverage > 0.1).float(), 3, stride=1, padding=1)
    return 1 + (weight - 1) * near_shape


def held_out_accuracy(text_encoder: Any, unet: Any, vae: Any, tokenizer: Any, classifier: Classifier,
                      steps: int, count: int, guidance: float) -> dict[str, float]:
    """The classifier's accuracy on ``count`` of the held-out quality prompts (every third, so that all 20 held-out
    triples appear in 40), sampled at ``steps`` steps: the per-epoch sign of whether the model composes shape, colour
    and position."""
    prompts = data.quality_prompts()[::3][:count]
    pipe = _pipeline(text_encoder, unet, vae, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipe([p["prompt"] for p in prompts], num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
    scenes = [data.Scene(**{name: str(p[name]) for name in data.ATTRIBUTES}) for p in prompts]
    accuracy = _accuracy(classifier, torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1, scenes)
    return {name: accuracy[name] for name in data.SCORED}


def train_diffusion(args: argparse.Namespace, rng: np.random.Generator, vae: Any, classifier: Classifier,
                    out: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))
    unet = UNet2DConditionModel(**UNET)
    noise_schedule = DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k in (
        "beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")})
    pool, scenes = make_pool(args, rng, vae)
    # Min-SNR-style weighting of the v loss (Hang et al., 2023): the nearly clean timesteps stop dominating the
    # gradient, and at the noisiest ones (SNR + 1 ~ 1) the weight stays 1 rather than the SNR's ~0.
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    snr_weights = torch.clamp(snr + 1, max=args.min_snr_gamma) / (snr + 1)
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    parameters = list(text_encoder.parameters()) + list(unet.parameters())
    ema_parameters = list(ema_text.parameters()) + list(ema_unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-2)
    schedule = _warmup_cosine(optimizer, args.unet_steps)
    steps_per_epoch = max(1, args.unet_steps // args.epochs)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, args.unet_steps + 1):
        index = torch.from_numpy(rng.integers(0, len(pool), args.batch))
        captions = ["" if rng.random() < 0.1 else data.caption(scenes[int(k)], rng) for k in index]
        tokens = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        latents = pool[index]
        noise = pyramid_noise(rng, tuple(latents.shape), args.pyramid_discount)
        # Position is settled in the first epochs by the noisiest timesteps; after that the shape's outline, decided
        # at middle noise levels, needs the share of batches the high draw took from them (docs/shapes-training.md,
        # "Shape, and why the high-timestep draw stops").
        fraction = args.high_timestep_fraction if step <= args.high_timestep_until * args.unet_steps else 0.0
        high = rng.random(args.batch) < fraction
        timesteps = torch.from_numpy(np.where(high, rng.integers(HIGH_TIMESTEP, 1000, args.batch),
                                              rng.integers(0, 1000, args.batch)))
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        target = noise_schedule.get_velocity(latents, noise, timesteps)
        states = text_encoder(tokens.input_ids).last_hidden_state
        error = F.mse_loss(unet(noisy, timesteps, states).sample, target, reduction="none")
        weights = shape_cell_weights(latents / vae.config.scaling_factor, args.shape_loss_weight)
        per_image = (error * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * error.shape[1])
        loss = (per_image * snr_weights[timesteps]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in zip(ema_parameters, parameters, strict=True):
                ema.lerp_(live, 1 - decay)
        losses.append(loss.item())
        _progress("diffusion", step, args.unet_steps, started, loss=float(np.mean(losses[-50:])))
        if step % steps_per_epoch == 0 or step == args.unet_steps:
            epoch = math.ceil(step / steps_per_epoch)
            sample_grid(ema_text, ema_unet, vae, tokenizer, out / "samples" / f"epoch-{epoch:02d}.png", args.sample_steps)
            # Guidance 2 is where this model is used (the demo, BENCHMARKS); guidance 4, SD's usual range, shows
            # whether stronger guidance still keeps the colour.
            accuracy = {f"guidance {g:g}": held_out_accuracy(ema_text, ema_unet, vae, tokenizer, classifier,
                                                             args.sample_steps, args.held_out_prompts, g)
                        for g in EVAL_GUIDANCE}
            for setting, scores in accuracy.items():
                log.info("epoch %d: held-out accuracy at %s: %s", epoch, setting,
                         " ".join(f"{k} {v:.0%}" for k, v in scores.items()))
            history.append({"epoch": epoch, "step": step, "loss": float(np.mean(losses[-steps_per_epoch:])),
                            "seconds": time.perf_counter() - started, "held_out_accuracy": accuracy})
            (out / "train-log.json").write_text(json.dumps({"epochs": history, "losses": losses}) + "\n")
    return ema_text, ema_unet, history


def _pipeline(text_encoder: Any, unet: Any, vae: Any, tokenizer: Any) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def sample_grid(text_encoder: Any, unet: Any, vae: Any, tokenizer: Any, path: Path, steps: int = 20) -> None:
    """The sample prompts at ``steps`` steps, guidance 2: a row per prompt, two seeds each."""
    pipe = _pipeline(text_encoder, unet, vae, tokenizer)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        images = pipe(list(SAMPLE_PROMPTS) * 2, num_inference_steps=steps, guidance_scale=EVAL_GUIDANCE[0],
                      generator=generator, output_type="np").images
    tiles = (images * 255).round().astype(np.uint8)
    half = len(SAMPLE_PROMPTS)
    grid = np.concatenate([np.concatenate([tiles[k], tiles[k + half]], axis=1) for k in range(half)], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    log.info("samples written to %s", path)


def export_classifier(model: Classifier, out: Path) -> None:
    torch.onnx.export(model, (torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE),), str(out / "classifier.onnx"),
                      input_names=["images"], output_names=list(data.ATTRIBUTES), dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in data.ATTRIBUTES}})


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*.safetensors")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced only when training ends)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (part of what makes a run repeatable)")
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--classifier-eval", type=int, default=1024, help="new images the classifier is scored on")
    parser.add_argument("--pool", type=int, default=16384, help="training images drawn and encoded once")
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10,
                        help="sample grids, held-out accuracy and log entries are written per epoch")
    parser.add_argument("--sample-steps", type=int, default=20, help="denoising steps of the per-epoch sample grids")
    parser.add_argument("--held-out-prompts", type=int, default=40, help="held-out prompts scored after each epoch")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--min-snr-gamma", type=float, default=5.0, help="cap of the v loss's weight (SNR + 1)")
    parser.add_argument("--high-timestep-fraction", type=float, default=0.5,
                        help=f"share of timesteps drawn from t >= {HIGH_TIMESTEP} (the rest uniformly)")
    parser.add_argument("--high-timestep-until", type=float, default=0.4,
                        help="share of the UNet steps that draw --high-timestep-fraction; later steps draw uniformly")
    parser.add_argument("--shape-loss-weight", type=float, default=5.0,
                        help="weight of the diffusion loss on latent cells at and around the shape (1: uniform)")
    parser.add_argument("--pyramid-discount", type=float, default=0.4,
                        help="weight ratio between successive scales of the multi-resolution noise (0: plain noise)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    if args.out.exists() and not args.overwrite:
        parser.error(f"{args.out} exists; pass --overwrite to replace it")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    staging = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_clip_tokenizer(staging / "tokenizer", TOKENIZER_CONFIG)
    started = time.perf_counter()

    vae = train_vae(args, rng)
    classifier, classifier_accuracy = train_classifier(args, rng, vae)
    text_encoder, unet, history = train_diffusion(args, rng, vae, classifier, staging)

    from transformers import CLIPTokenizer

    pipe = _pipeline(text_encoder, unet, vae, CLIPTokenizer.from_pretrained(str(staging / "tokenizer")))
    pipe.save_pretrained(staging, safe_serialization=True)
    (staging / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # 3.6 MB that vocab.json + merges.txt rebuild
    (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2) + "\n")
    export_classifier(classifier, staging)
    (staging / "classifier.json").write_text(json.dumps(
        {"input": "images: float32 NCHW in [0, 1], 64x64", "outputs": {k: list(v) for k, v in data.ATTRIBUTES.items()},
         "scored": list(data.SCORED), "accuracy_on_new_images": classifier_accuracy,
         "new_images": args.classifier_eval}, indent=2) + "\n")
    (staging / "quality_prompts.json").write_text(json.dumps(
        {"held_out_triples": sorted(map(list, data.held_out_triples())), "prompts": data.quality_prompts()},
        indent=1) + "\n")
    record = {"seed": args.seed, "threads": args.threads, "torch": torch.__version__, "arguments": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "overwrite")},
        "seconds": round(time.perf_counter() - started, 1), "final_loss": history[-1]["loss"],
        "weights_sha256": folder_digest(staging)}
    (staging / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)
    log.info("trained in %.0f s; weights sha256 %s; written to %s", record["seconds"], record["weights_sha256"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
