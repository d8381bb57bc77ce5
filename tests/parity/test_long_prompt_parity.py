"""Long prompts and weighting (runtime/prompts.py) against compel, and end to end against diffusers fed compel's
embeddings.

compel is the reference where it defines the same thing: ``prompt_weighting="compel"`` is compel's arithmetic
(``truncate_long_prompts=False``, ``DownweightMode.REMOVE``, ``SplitLongTextMode.BRUTAL``) on the fragments our
parser reads from the web UI's syntax, and an unweighted long prompt is the same under both weightings. Our side runs
the same torch text encoder here, so only the chunking and weighting arithmetic is compared (bar 1e-5); the ONNX text
encoder and the UNet are compared through images.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
compel_module = pytest.importorskip("compel.embeddings_provider")

from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.prompts import PromptEncoder, parse_prompt  # noqa: E402
from diffship.runtime.tokenizer import CLIPTokenizer  # noqa: E402

WEIGHTED = (
    "a (majestic red fox:1.3) standing in [deep] fresh snow at the edge of a quiet pine forest, ((golden hour light)), "
    "soft (rim lighting:1.2), breath visible in the cold air, (snowflakes:0.6) drifting slowly, a frozen river in the "
    "background with [[distant mountains]], wildlife photography, telephoto lens, shallow depth of field, bokeh, "
    "(highly detailed fur:1.4), sharp eyes, natural colors, national geographic award winning photo, 8k, "
    "(film grain:0.4), kodak portra 400, cinematic composition, rule of thirds, (muted tones:0.8), peaceful mood, "
    "morning mist rising from the trees, tracks in the snow leading toward the viewer, a crow perched on a branch, "
    "(warm and cold contrast:1.1), volumetric light rays, award winning, masterpiece, best quality, detailed background, "
    "an old wooden cabin far away with smoke rising from its chimney, (icicles hanging from the roof:0.7), a narrow "
    "path winding between snow covered boulders, [[[overexposed sky]]], gentle wind moving the fox's tail, a second "
    "fox watching from behind a fallen log, (soft shadows:1.25), crisp winter atmosphere, quiet and still"
)
PLAIN = WEIGHTED.replace("(", "").replace(")", "").replace("[", "").replace("]", "").replace(":1.3", "")


def compel_provider(pipe):
    module = compel_module
    return module.EmbeddingsProvider(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, truncate=False,
        downweight_mode=module.DownweightMode.REMOVE, split_long_text_mode=module.SplitLongTextMode.BRUTAL)


def compel_embeddings(pipe, prompt: str) -> np.ndarray:
    fragments = [f for f in parse_prompt(prompt) if not f.breaks]
    with torch.inference_mode():
        embeddings = compel_provider(pipe).get_embeddings_for_weighted_prompt_fragments(
            [[f.text for f in fragments]], [[f.weight for f in fragments]])
    return embeddings[0].numpy()


def torch_encoder(pipe):
    def encode(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return pipe.text_encoder(torch.from_numpy(ids))[0].numpy()
    return encode


@pytest.fixture(scope="module")
def tokenizers(packages) -> dict[str, CLIPTokenizer]:
    return {name: CLIPTokenizer.from_dir(path / "tokenizer") for name, path in packages.items()}


@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_weighted_200_token_prompt_matches_compel(model, tokenizers, reference_pipelines) -> None:
    pipe = reference_pipelines[model].pipe
    ours = PromptEncoder(tokenizers[model], torch_encoder(pipe), "compel")
    assert sum(len(tokenizers[model].tokenize(f.text)) for f in parse_prompt(WEIGHTED)) >= 200
    assert ours.chunk_count(WEIGHTED) == 3
    expected = compel_embeddings(pipe, WEIGHTED)
    actual = ours.encode_prompt(WEIGHTED)
    assert actual.shape == expected.shape == (3 * 77, pipe.text_encoder.config.hidden_size)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("weighting", ["webui", "compel"])
@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_unweighted_long_prompt_matches_compel_under_both_weightings(model, weighting, tokenizers,
                                                                     reference_pipelines) -> None:
    pipe = reference_pipelines[model].pipe
    prompt = " ".join(PLAIN.split(", ")[:-1]).replace(",", "")  # no commas: the web UI's comma backtrack stays out
    ours = PromptEncoder(tokenizers[model], torch_encoder(pipe), weighting).encode_prompt(prompt)
    np.testing.assert_allclose(ours, compel_embeddings(pipe, prompt), rtol=0, atol=1e-5)


def test_compel_padding_of_the_shorter_side_matches(tokenizers, reference_pipelines) -> None:
    pipe = reference_pipelines["tiny"].pipe
    provider = compel_provider(pipe)
    with torch.inference_mode():
        long = provider.get_embeddings_for_weighted_prompt_fragments([[PLAIN]], [[1.0]])
        short = provider.get_embeddings_for_weighted_prompt_fragments([["blurry"]], [[1.0]])
        empty = provider.get_embeddings_for_weighted_prompt_fragments([[""]], [[1.0]])
    padded_reference = torch.cat([short, empty.repeat(1, long.shape[1] // 77 - 1, 1)], dim=1)[0].numpy()
    ours = PromptEncoder(tokenizers["tiny"], torch_encoder(pipe), "compel").encode_batch(["blurry"], long.shape[1] // 77)
    np.testing.assert_allclose(ours[0], padded_reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny", "tiny-v"])
def test_pipeline_long_prompt_matches_diffusers_on_compel_embeddings(model, packages, reference_pipelines) -> None:
    reference = reference_pipelines[model]
    negative = "blurry, low quality, (watermark:1.3)"
    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    with Pipeline.from_package(packages[model], backend="ort", precision="fp32", device="cpu") as ours:
        result = ours(WEIGHTED, negative_prompt=negative, num_inference_steps=8, guidance_scale=7.5, height=64,
                      width=64, latents=latents, seed=0, scheduler="ddim", long_prompts=True,
                      prompt_weighting="compel")
    cond = compel_embeddings(reference.pipe, WEIGHTED)
    uncond = compel_embeddings(reference.pipe, negative)
    uncond = np.concatenate([uncond, *[compel_embeddings(reference.pipe, "")] * (len(cond) // 77 - 1)])
    from diffship.bench.reference import use_scheduler

    use_scheduler(reference, "ddim")
    with torch.inference_mode():
        expected = reference.pipe(
            prompt_embeds=torch.from_numpy(cond[None]), negative_prompt_embeds=torch.from_numpy(uncond[None]),
            num_inference_steps=8, guidance_scale=7.5, height=64, width=64, latents=torch.from_numpy(latents),
            output_type="pil").images[0]
    worst = int(np.abs(np.asarray(expected).astype(int) - result.images[0].astype(int)).max())
    assert worst <= 2, f"max pixel difference {worst}/255"
    assert result.parameters[0]["long_prompts"] is True and result.parameters[0]["prompt_weighting"] == "compel"
