"""Adding a family takes its description, its text side and its exporter wrapper, registered where diffship looks
for them (docs/design.md, "Adding a family"): the made-up family of tests/made_up runs through the unchanged
``Pipeline`` over fake engines. (Exported for real and run on ONNX Runtime: tests/exporter/test_made_up_family.py.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from tests.fakes import Function, NumpyBackend, write_package
from tests.made_up import description, text_side
from tests.made_up.description import CONSTANTS, NAME
from tests.made_up.text_side import PooledTextSide

BACKEND = "numpy-pooled-toy"


def toy_functions(seed: int = 0) -> dict[str, Function]:
    """numpy stand-ins for the family's components that use every input."""
    rng = np.random.default_rng(seed)
    width, channels = CONSTANTS.text_encoders[0].hidden_size, CONSTANTS.latent_channels
    table = rng.standard_normal((49408, width)).astype(np.float32)
    projection = rng.standard_normal((width, channels)).astype(np.float32) * 0.3
    factor = CONSTANTS.vae_scale_factor

    def text_encoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"hidden_states": np.tanh(table[feeds["input_ids"]])}

    def unet(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompt = (feeds["prompt_vector"] @ projection)[:, :, None, None]
        return {"model_output": 0.3 * feeds["sample"] + prompt}

    def vae_decoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        latents = feeds["latent_sample"][:, :3]
        return {"sample": np.tanh(latents.repeat(factor, axis=2).repeat(factor, axis=3))}

    return {"text_encoder": text_encoder, "unet": unet, "vae_decoder": vae_decoder}


@pytest.fixture(scope="module")
def toy_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    description.register()
    text_side.register()
    register_backend(BACKEND, lambda: NumpyBackend(functions=toy_functions()))
    return write_package(tmp_path_factory.mktemp("made-up") / NAME, CONSTANTS, family=NAME)


def test_made_up_family_runs_its_text_side_and_contract(toy_package: Path) -> None:
    with Pipeline.from_package(toy_package, backend=BACKEND) as pipe:
        assert isinstance(pipe.text, PooledTextSide)
        result = pipe("a red square", num_inference_steps=4, guidance_scale=3.0, seed=1, scheduler="ddim")
        unet_calls = pipe.engines["unet"].calls  # type: ignore[attr-defined]
    assert result.images[0].shape == (CONSTANTS.default_height, CONSTANTS.default_width, 3)
    assert result.parameters[0]["model"]["family"] == NAME
    # Guided: one UNet call per step on [unconditional; conditional], each image reading one pooled vector.
    assert len(unet_calls) == 4
    assert all(call["prompt_vector"] == (2, 16) and call["sample"] == (2, 4, 8, 8) for call in unet_calls)


def test_made_up_family_conditioning_reaches_the_unet(toy_package: Path) -> None:
    with Pipeline.from_package(toy_package, backend=BACKEND) as pipe:
        fox, cat = (pipe(prompt, num_inference_steps=3, guidance_scale=3.0, seed=7).images[0]
                    for prompt in ("a fox", "a cat"))
        unguided = pipe("a fox", num_inference_steps=3, guidance_scale=1.0, seed=7)
        assert pipe.engines["unet"].calls[-1]["prompt_vector"] == (1, 16)  # type: ignore[attr-defined]
    assert np.abs(fox.astype(int) - cat.astype(int)).max() > 10
    assert np.abs(fox.astype(int) - unguided.images[0].astype(int)).max() > 10


def test_made_up_family_takes_its_own_call_arguments_through_family_options(toy_package: Path) -> None:
    with Pipeline.from_package(toy_package, backend=BACKEND) as pipe:
        plain = pipe("a fox", num_inference_steps=3, guidance_scale=3.0, seed=7)
        louder = pipe("a fox", num_inference_steps=3, guidance_scale=3.0, seed=7, family_options={"vector_scale": 3.0})
        with pytest.raises(PipelineInputError, match="vector_scale must be a number in"):
            pipe("a fox", num_inference_steps=2, family_options={"vector_scale": "loud"})
    assert louder.parameters[0]["vector_scale"] == 3.0 and plain.parameters[0]["vector_scale"] == 1.0
    assert np.abs(louder.images[0].astype(int) - plain.images[0].astype(int)).max() > 10


def test_made_up_family_refuses_what_its_description_and_text_side_refuse(toy_package: Path) -> None:
    picture = np.zeros((32, 32, 3), np.uint8)
    with Pipeline.from_package(toy_package, backend=BACKEND) as pipe:
        with pytest.raises(PipelineInputError, match=f"a {NAME} package does txt2img, not img2img"):
            pipe("a fox", image=picture, num_inference_steps=2)
        with pytest.raises(PipelineInputError, match=f"the {NAME} family takes none of original_size"):
            pipe("a fox", original_size=(32, 32), num_inference_steps=2)
        with pytest.raises(PipelineInputError, match="denoising_end is SDXL's base -> refiner hand-off"):
            pipe("a fox", denoising_end=0.5, num_inference_steps=2)
