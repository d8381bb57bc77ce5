"""``<lora:NAME:WEIGHT>`` tags in the service's requests (``serve --lora-dir``): each request gets the images of a
pipeline opened with those LoRAs, tagged and untagged requests side by side; without the folder a tag is a 422 in one
line."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from diffship.runtime import Pipeline
from diffship.runtime.batching import BatchSettings
from diffship.serve.app import create_app
from diffship.serve.local import serve_in_thread
from diffship.serve.models import ModelSet
from diffship.serve.service import ImageService, ServeConfig
from diffship.serve.webui_routes import WebUi
from tests.serve.test_app import decode

BODY = {"steps": 3, "width": 64, "height": 64, "seed": 8, "cfg_scale": 7.5}


@contextlib.contextmanager
def tagged_service(package: Path, lora_dir: Path | None) -> Iterator[str]:
    pipe = Pipeline.from_package(package, device="cpu", threads=1)  # its own: the runner changes its LoRAs
    service = ImageService(ServeConfig(package=package, batch=BatchSettings(max_batch=4, max_wait_s=0.3),
                                       warmup=False, timeout_s=120.0), pipeline=pipe)
    with pipe, serve_in_thread(create_app(service, web_ui=WebUi(service, ModelSet((package,)), lora_dir))) as url:
        yield url


def reference(package: Path, loras: list[Any], prompt: str) -> np.ndarray:
    with Pipeline.from_package(package, device="cpu", threads=1, loras=loras) as pipe:
        return pipe(prompt, num_inference_steps=3, height=64, width=64, seed=8, guidance_scale=7.5).images[0]


def test_service_applies_prompt_lora_tags_per_request(tiny_package: Path, lora_files: dict[str, Path]) -> None:
    prompts = {"tagged": "a red fox <lora:r4:0.7>", "plain": "a red fox", "other": "a red fox <lora:r8:1>"}
    answers: dict[str, httpx.Response] = {}

    def send(url: str, name: str) -> None:
        answers[name] = httpx.post(f"{url}/sdapi/v1/txt2img", json={**BODY, "prompt": prompts[name]}, timeout=120)

    with tagged_service(tiny_package, lora_files["r4"].parent) as url:
        threads = [threading.Thread(target=send, args=(url, name)) for name in prompts]  # may share one batch
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0)
        generated = client.images.generate(prompt="a red fox <lora:r4:0.7>", size="64x64", response_format="b64_json",
                                           extra_body={"steps": 3, "seed": 8, "guidance_scale": 7.5})
        missing = httpx.post(f"{url}/sdapi/v1/txt2img", json={**BODY, "prompt": "a <lora:gone:1>"})
    expected = {"tagged": reference(tiny_package, [(lora_files["r4"], 0.7)], "a red fox"),
                "plain": reference(tiny_package, [], "a red fox"),
                "other": reference(tiny_package, [lora_files["r8"]], "a red fox")}
    for name, answer in answers.items():
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(decode(answer.json()["images"][0])[0], expected[name], err_msg=name)
    assert generated.data is not None and generated.data[0].b64_json
    pixels, recorded = decode(generated.data[0].b64_json)
    np.testing.assert_array_equal(pixels, expected["tagged"])
    assert recorded["loras"] == ["r4.safetensors:0.7"] and recorded["prompt"] == "a red fox"
    assert missing.status_code == 422 and "<lora:gone>: no gone.safetensors in the LoRA folder" in missing.text
    assert str(lora_files["r4"].parent) not in missing.text


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/v1/images/generations"])
def test_service_without_a_lora_dir_refuses_a_tag_in_one_line(serve_pipe: Pipeline, tiny_package: Path,
                                                              path: str) -> None:
    service = ImageService(ServeConfig(package=tiny_package, warmup=False), pipeline=serve_pipe)
    with serve_in_thread(create_app(service)) as url:
        answer = httpx.post(f"{url}{path}", json={"prompt": "a fox <lora:r4:0.5>", "steps": 2})
    assert answer.status_code == 422
    assert "no LoRA folder was given (--lora-dir, lora_dir=)" in answer.text
