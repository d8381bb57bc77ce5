"""``--clip-skip``: the text encoder boundaries compute what diffusers' ``encode_prompt(clip_skip=...)`` computes, the
package records it, and a runtime call may only restate it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffship.bench.reference import alias_text_model
from diffship.exporter.families import family_exporter
from diffship.exporter.package import ExportError, ExportRequest, export_package
from diffship.exporter.sources import load_source
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError

PROMPTS = ["a red fox in the snow", "two blue squares"]


def _token_ids(tokenizer: object, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,  # type: ignore[operator]
                     truncation=True, return_tensors="pt").input_ids


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_clip_skip_boundaries_compute_what_diffusers_encode_prompt_does(model: str) -> None:
    source = load_source(model)
    try:
        pipe = source.diffusers_pipeline()
        wrappers = family_exporter(source.family)
        with torch.inference_mode():
            if model == "tiny":
                alias_text_model(pipe.text_encoder)  # diffusers' clip_skip path on transformers 5 (bench/reference.py)
                expected, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False, clip_skip=1)
                default, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
                ours = wrappers.boundary_module("text_encoder", source, clip_skip=1)(_token_ids(pipe.tokenizer, PROMPTS))[0]
                pooled = expected_pooled = None
            else:
                expected, _, expected_pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu",
                                                                     do_classifier_free_guidance=False, clip_skip=1)
                default = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)[0]
                first = wrappers.boundary_module("text_encoder", source, clip_skip=1)(_token_ids(pipe.tokenizer, PROMPTS))
                second, pooled = wrappers.boundary_module("text_encoder_2", source, clip_skip=1)(
                    _token_ids(pipe.tokenizer_2, PROMPTS))
                ours = torch.cat([first, second], dim=-1)
    finally:
        source.close()
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    if pooled is not None:
        np.testing.assert_allclose(pooled.numpy(), expected_pooled.numpy(), rtol=1e-5, atol=1e-5)
    # A layer that was really skipped: the default embeddings are far from these.
    assert float((expected - default).abs().max()) > 0.1


def test_a_call_may_only_restate_the_packages_clip_skip(tiny_xl_package: Path) -> None:
    with Pipeline.from_package(tiny_xl_package, device="cpu") as pipe:
        assert pipe.constants.clip_skip == 0
        for allowed in (None, 0):
            pipe.prepare("a red fox", num_inference_steps=2, clip_skip=allowed)
        with pytest.raises(PipelineInputError, match=r"exported with clip_skip 0.*--clip-skip 2"):
            pipe.prepare("a red fox", num_inference_steps=2, clip_skip=2)
        with pytest.raises(PipelineInputError, match="whole number"):
            pipe.prepare("a red fox", num_inference_steps=2, clip_skip=-1)


@pytest.mark.parametrize(("model", "layers"), [("tiny", 2), ("tiny-xl", 3)])
def test_export_refuses_a_clip_skip_that_leaves_no_layer(model: str, layers: int, tmp_path: Path) -> None:
    # SD reads the last layer (2 layers: 0 or 1 may be skipped); SDXL the penultimate (3 layers: 0 or 1 too).
    with pytest.raises(ExportError, match=rf"clip_skip 2 leaves no layer of this model's {layers}-layer text encoder.*"
                                          r"give 0 to 1"):
        export_package(ExportRequest(out=tmp_path / "pkg", model=model, clip_skip=2))
    assert not (tmp_path / "pkg").exists()
