"""``<lora:NAME:WEIGHT>`` prompt tags: applied from a LoRA folder (the same images as ``loras=``), or refused with one
line; ``Pipeline`` never reads them as words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.lora import LoraRequest
from diffship.runtime.prompt_tags import PromptTagError, generate_with_tags, lora_tags
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def fake_pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    register_backend("numpy-tags", NumpyBackend)
    return Pipeline.from_package(write_package(tmp_path_factory.mktemp("fake") / "pkg"), backend="numpy-tags")


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    (tmp_path / "styles").mkdir()
    for name in ("ink.safetensors", "styles/film.safetensors"):
        (tmp_path / name).write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize("prompt", ["a fox <lora:ink:0.8>", "<LORA:ink>"])
def test_pipeline_refuses_a_prompt_with_a_lora_tag_in_one_line(fake_pipe: Pipeline, prompt: str) -> None:
    with pytest.raises(PromptTagError, match="holds the LoRA tag") as refused:
        fake_pipe(prompt, num_inference_steps=1)
    assert "\n" not in str(refused.value)
    with pytest.raises(PromptTagError, match="negative_prompt holds the LoRA tag"):
        fake_pipe.prepare("a fox", negative_prompt=["x <lora:ink:1>"])


def test_lora_tags_are_taken_out_and_found_in_the_folder(lora_dir: Path) -> None:
    tagged = lora_tags(["a fox <lora:ink:0.8>, in snow <lora:styles/film>"], lora_dir)
    assert tagged.prompts == ("a fox , in snow",)
    assert tagged.loras == (LoraRequest((lora_dir / "ink.safetensors").resolve(), 0.8),
                            LoraRequest((lora_dir / "styles/film.safetensors").resolve(), 1.0))
    assert lora_tags(["no tags here"], None).loras == ()


@pytest.mark.parametrize(
    ("prompts", "negatives", "folder", "message"),
    [
        (["a <lora:ink:0.8>"], [], False, "no LoRA folder was given (--lora-dir, lora_dir=)"),
        (["a <lora:gone:0.8>"], [], True, "<lora:gone>: no gone.safetensors in the LoRA folder; it has ink, styles/film"),
        (["a <lora:ink:0.8:0.5>"], [], True, "separate text-encoder and UNet weights are not supported"),
        (["a <lora:ink:lots>"], [], True, "the weight must be a number, as in <lora:ink:0.8>; got 'lots'"),
        (["a <lora:ink:nan>"], [], True, "the weight must be a number"),
        (["a <lora:../../etc/x:1>"], [], True, "not a path out of it"),
        (["a <lora:ink:1>", "b <lora:ink:0.5>"], [], True, "name different <lora:...> tags"),
        (["a"], ["b <lora:ink:1>"], True, "negative_prompt holds the LoRA tag"),
    ],
)
def test_lora_tags_refused_with_one_line(lora_dir: Path, prompts: list[str], negatives: list[str], folder: bool,
                                         message: str) -> None:
    with pytest.raises(PromptTagError) as refused:
        lora_tags(prompts, lora_dir if folder else None, negatives)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert str(lora_dir) not in str(refused.value)  # the service shows it to clients: no path of this machine


def test_generate_with_tags_matches_loras_given_to_the_pipeline(tiny_package: Path, lora_files: dict[str, Path]) -> None:
    lora_dir = lora_files["r4"].parent
    with Pipeline.from_package(tiny_package, device="cpu", threads=1, loras=[lora_files["r8"]]) as pipe:
        tagged = generate_with_tags(pipe, "a red fox <lora:r4:0.7>", lora_dir, num_inference_steps=3, seed=2,
                                    height=64, width=64)
        assert pipe.loras == (LoraRequest(lora_files["r8"]),)  # put back after the call
    with Pipeline.from_package(tiny_package, device="cpu", threads=1,
                               loras=[lora_files["r8"], (lora_files["r4"], 0.7)]) as reference:
        expected = reference("a red fox", num_inference_steps=3, seed=2, height=64, width=64)
    np.testing.assert_array_equal(tagged.images[0], expected.images[0])
    assert tagged.parameters[0]["loras"] == ["r8.safetensors:1", "r4.safetensors:0.7"]
    assert tagged.parameters[0]["prompt"] == "a red fox"
