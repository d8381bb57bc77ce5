"""The web UI's API as its clients drive it, on a real socket: submit in a thread and poll ``/progress`` until the
answer comes, interrupt one, switch models through ``/options`` (``serve --package A --package B``), read the
listings and ``/png-info``; ``inpainting_mask_invert: true`` and ``scheduler`` without ``sampler_name`` are honoured;
unknown routes answer JSON."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from diffship.runtime.batching import BatchSettings
from diffship.runtime.errors import PipelineInputError
from diffship.serve.app import create_app
from diffship.serve.local import serve_in_thread
from diffship.serve.models import ModelSet
from diffship.serve.service import ImageService, ServeConfig
from diffship.serve.webui_routes import WebUi
from tests.serve.conftest import wait_for
from tests.serve.test_app import decode, png_b64


@contextlib.contextmanager
def web_ui_service(pipe: Pipeline, packages: tuple[Path, ...], lora_dir: Path | None = None
                   ) -> Iterator[tuple[str, ImageService]]:
    service = ImageService(ServeConfig(package=packages[0], batch=BatchSettings(max_batch=1), timeout_s=120.0,
                                       warmup=False), pipeline=pipe)
    app = create_app(service, web_ui=WebUi(service, ModelSet(packages), lora_dir))
    with serve_in_thread(app) as url:
        yield url, service


class Submitted:
    """A request answered on a thread, as a UI sends it while it polls progress."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.response: httpx.Response | None = None
        self.thread = threading.Thread(target=self._send, args=(url, body))
        self.thread.start()

    def _send(self, url: str, body: dict[str, Any]) -> None:
        self.response = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)

    def answer(self) -> httpx.Response:
        self.thread.join(300)
        assert self.response is not None
        return self.response


def poll_until_answered(url: str, submitted: Submitted) -> list[dict[str, Any]]:
    polls = []
    while submitted.thread.is_alive():
        polls.append(httpx.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "false"}).json())
        time.sleep(0.01)
    return polls


def test_web_ui_client_polls_progress_until_done_then_interrupts_and_skips_one(serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a lighthouse", "steps": 40, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        idle = httpx.get(f"{url}/sdapi/v1/progress").json()
        submitted = Submitted(url, body)
        polls = poll_until_answered(url, submitted)
        done = submitted.answer()
        after = httpx.get(f"{url}/sdapi/v1/progress").json()

        # batch_size 1 x n_iter 2 with --max-batch 1: two pieces, the web UI's two batches
        stopped = Submitted(url, {**body, "steps": 500, "n_iter": 2})
        wait_for(lambda: httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] > 0)
        assert httpx.post(f"{url}/sdapi/v1/interrupt").json() == {}
        during = httpx.get(f"{url}/sdapi/v1/progress").json()
        interrupted = stopped.answer()

        skipped_one = Submitted(url, {**body, "steps": 100, "n_iter": 2})
        wait_for(lambda: httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] > 0)
        assert httpx.post(f"{url}/sdapi/v1/skip").json() == {}
        while_skipping = httpx.get(f"{url}/sdapi/v1/progress").json()
        skipped = skipped_one.answer()
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0 and idle["current_image"] is None
    assert done.status_code == 200, done.text
    expected = serve_pipe("a lighthouse", guidance_scale=7.0, num_inference_steps=40, height=64, width=64, seed=5, scheduler="Euler")
    np.testing.assert_array_equal(decode(done.json()["images"][0])[0], expected.images[0])
    running = [p for p in polls if p["state"]["sampling_step"] > 0]
    assert running, "no poll saw the job sampling"
    assert all(p["state"]["job_count"] == 1 and p["state"]["sampling_steps"] == 40 for p in running)
    steps = [p["state"]["sampling_step"] for p in running]
    assert steps == sorted(steps) and 0 < running[0]["progress"] <= running[-1]["progress"] <= 1
    assert all(p["eta_relative"] >= 0 for p in running)
    assert after["state"]["job_count"] == 0 and after["state"]["job"] == ""
    assert during["state"]["interrupted"] is True
    # as the web UI: 200 with the images as far as they got; the interrupted batch's next one never runs
    assert interrupted.status_code == 200, interrupted.text
    assert len(interrupted.json()["images"]) == 1 and json.loads(interrupted.json()["info"])["all_seeds"] == [5]
    assert while_skipping["state"]["skipped"] is True and while_skipping["state"]["interrupted"] is False
    # the skipped batch ends early, the next one runs in full
    assert skipped.status_code == 200, skipped.text
    first, second = (decode(image)[0] for image in skipped.json()["images"])
    full = [serve_pipe("a lighthouse", guidance_scale=7.0, num_inference_steps=100, height=64, width=64, seed=seed,
                       scheduler="Euler").images[0] for seed in (5, 6)]
    assert not np.array_equal(first, full[0])
    np.testing.assert_array_equal(second, full[1])


def test_web_ui_client_switches_models_through_options(serve_pipe: Pipeline, tiny_package: Path,
                                                        tiny_v_package: Path) -> None:
    body = {"prompt": "a red fox", "steps": 3, "width": 64, "height": 64, "seed": 7}
    with web_ui_service(serve_pipe, (tiny_package, tiny_v_package)) as (url, service):
        models = httpx.get(f"{url}/sdapi/v1/sd-models").json()
        before = httpx.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"]
        switched = httpx.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": models[1]["title"]}, timeout=120)
        now = httpx.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"]
        on_v = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
        unknown = httpx.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "sd15.safetensors [abc]"})
        other = httpx.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
        same = httpx.post(f"{url}/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1, "samples_format": "png"})
        back = httpx.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": tiny_package.name}, timeout=120)
        on_tiny = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120)
    assert [m["title"] for m in models] == [tiny_package.name, tiny_v_package.name]
    assert all(str(Path("/")) not in m["filename"] for m in models)  # no path leaves the server
    assert before == tiny_package.name and switched.status_code == 200 and now == tiny_v_package.name
    with Pipeline.from_package(tiny_v_package, device="cpu", threads=1) as v_pipe:
        expected_v = v_pipe("a red fox", guidance_scale=7.0, num_inference_steps=3, height=64, width=64, seed=7).images[0]
    np.testing.assert_array_equal(decode(on_v.json()["images"][0])[0], expected_v)
    assert unknown.status_code == 422 and f"this server has {tiny_package.name}, {tiny_v_package.name}" in unknown.text
    assert other.status_code == 422 and "CLIP_stop_at_last_layers: only sd_model_checkpoint" in other.text
    assert same.status_code == 200 and back.status_code == 200
    expected = serve_pipe("a red fox", guidance_scale=7.0, num_inference_steps=3, height=64, width=64, seed=7).images[0]
    np.testing.assert_array_equal(decode(on_tiny.json()["images"][0])[0], expected)


def test_web_ui_listings_png_info_and_unknown_routes_answer_json(serve_pipe: Pipeline, tiny_package: Path,
                                                                  tmp_path: Path) -> None:
    (tmp_path / "styles").mkdir()
    for name in ("ink.safetensors", "styles/film.safetensors", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    body = {"prompt": "a fox, at dusk", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
            "seed": 11, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 6.5}
    with web_ui_service(serve_pipe, (tiny_package,), lora_dir=tmp_path) as (url, _):
        image = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60).json()["images"][0]
        info = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": image}).json()
        not_png = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"})
        listed = {name: httpx.get(f"{url}/sdapi/v1/{name}").json()
                  for name in ("loras", "embeddings", "schedulers", "upscalers", "cmd-flags")}
        missing = httpx.get(f"{url}/sdapi/v1/extra-single-image")
        wrong_method = httpx.get(f"{url}/sdapi/v1/interrupt")
    assert [lora["name"] for lora in listed["loras"]] == ["ink", "film"]
    assert listed["loras"][1]["path"] == "styles/film.safetensors"
    assert listed["embeddings"] == {"loaded": {}, "skipped": {}}
    assert [s["label"] for s in listed["schedulers"]] == ["Automatic", "Karras"]
    assert [u["name"] for u in listed["upscalers"]] == ["None"] and listed["cmd-flags"]["api"] is True
    assert info["info"].startswith("a fox, at dusk\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M Karras")
    assert info["parameters"]["Seed"] == "11" and info["parameters"]["CFG scale"] == "6.5"
    assert info["parameters"]["Size-1"] == "64" and info["parameters"]["Prompt"] == "a fox, at dusk"
    assert json.loads(info["items"]["diffship"])["seed"] == 11
    assert not_png.status_code == 422 and "image is not a base64-encoded PNG" in not_png.text
    assert missing.status_code == 404 and missing.json()["detail"] == "Not Found"
    assert wrong_method.status_code == 405 and wrong_method.json()["detail"] == "Method Not Allowed"


def test_inpainting_mask_invert_true_is_the_inverted_mask(serve_pipe: Pipeline, tiny_package: Path) -> None:
    rng = np.random.default_rng(2)
    picture = png_b64(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    mask = np.where(np.hypot(*np.mgrid[-32:32, -32:32]) < 20, 255, 0).astype(np.uint8)
    body = {"prompt": "a vase", "init_images": [picture], "steps": 3, "seed": 4, "denoising_strength": 0.8}
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        inverted = httpx.post(f"{url}/sdapi/v1/img2img", timeout=60, json={
            **body, "mask": png_b64(Image.fromarray(mask)), "inpainting_mask_invert": True})
        given = httpx.post(f"{url}/sdapi/v1/img2img", timeout=60, json={
            **body, "mask": png_b64(Image.fromarray(255 - mask)), "inpainting_mask_invert": False})
        two = httpx.post(f"{url}/sdapi/v1/img2img", json={**body, "mask": png_b64(Image.fromarray(mask)),
                                                           "inpainting_mask_invert": 2})
    assert inverted.status_code == given.status_code == 200, inverted.text
    np.testing.assert_array_equal(decode(inverted.json()["images"][0])[0], decode(given.json()["images"][0])[0])
    assert two.status_code == 422 and "inpainting_mask_invert must be 0 or 1" in two.text


def test_scheduler_without_sampler_name_is_the_web_uis_default_sampler_on_that_schedule(
        serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a boat", "steps": 4, "width": 64, "height": 64, "seed": 9}
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        karras = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "scheduler": "Karras"}, timeout=60)
        automatic = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "scheduler": "Automatic"}, timeout=60)
        odd = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "scheduler": "Exponential"}, timeout=60)
    expected = serve_pipe("a boat", guidance_scale=7.0, num_inference_steps=4, height=64, width=64, seed=9, scheduler="euler_karras")
    np.testing.assert_array_equal(decode(karras.json()["images"][0])[0], expected.images[0])
    assert json.loads(karras.json()["info"])["sampler_name"] == "Euler Karras"
    assert json.loads(automatic.json()["info"])["sampler_name"] == "PLMS"  # the package's own
    assert odd.status_code == 422 and "scheduler must be Automatic or Karras" in odd.text


def test_png_info_reads_an_image_without_infotext(serve_pipe: Pipeline, tiny_package: Path) -> None:
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        info = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": base64.b64encode(plain.getvalue()).decode()})
    assert info.json() == {"info": "", "items": {}, "parameters": {}}


def test_override_settings_are_honoured_or_refused_never_ignored(serve_pipe: Pipeline, tiny_package: Path) -> None:
    body = {"prompt": "a kite", "steps": 2, "width": 64, "height": 64, "seed": 3}
    settings = {
        "same": {"sd_model_checkpoint": f"{tiny_package.name} [0123456789]", "CLIP_stop_at_last_layers": 1,
                 "samples_format": "png"},
        "model": {"sd_model_checkpoint": "sd15.safetensors [abc]"},
        "clip": {"CLIP_stop_at_last_layers": 2},
        "vae": {"sd_vae": "kl-f8-anime.ckpt"},
    }
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        answers = {name: httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "override_settings": value}, timeout=60)
                   for name, value in settings.items()}
    with pytest.raises(PipelineInputError) as python_clip:  # the Python API's own message is the reference
        serve_pipe.prepare("a kite", clip_skip=1)
    assert answers["same"].status_code == 200, answers["same"].text
    assert answers["model"].status_code == 422
    assert f"is not the model served now ({tiny_package.name})" in answers["model"].text
    assert answers["clip"].status_code == 422 and str(python_clip.value) in answers["clip"].json()["detail"]
    assert answers["vae"].status_code == 422 and "override_settings.sd_vae: this server cannot change it" in (
        answers["vae"].text)


def test_progress_current_image_is_the_jobs_latest_cheap_preview_as_a_png(serve_pipe: Pipeline,
                                                                          tiny_package: Path) -> None:
    body = {"prompt": "a lighthouse", "steps": 30, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}
    events: list[Any] = []
    serve_pipe("a lighthouse", guidance_scale=7.0, num_inference_steps=30, height=64, width=64, seed=5,
               scheduler="Euler", progress=events.append, preview_every=5)
    expected = {event.step: event.preview[0] for event in events if event.preview is not None}
    with web_ui_service(serve_pipe, (tiny_package,)) as (url, _):
        submitted = Submitted(url, body)
        polls, skipping = [], []
        while submitted.thread.is_alive():
            polls.append(httpx.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "false"}).json())
            skipping.append(httpx.get(f"{url}/sdapi/v1/progress", params={"skip_current_image": "true"}).json())
        assert submitted.answer().status_code == 200
    shown = [(poll["state"]["sampling_step"], np.asarray(Image.open(io.BytesIO(base64.b64decode(
        poll["current_image"]))).convert("RGB"))) for poll in polls if poll["current_image"] is not None]
    assert shown, "no poll saw a preview"
    assert sorted(expected) == list(range(5, 31, 5))
    for step, picture in shown:  # a recent preview made by the step the poll saw (the counter moves first)
        assert picture.shape == (8, 8, 3)
        assert any(np.array_equal(picture, expected[s]) for s in expected if step - 10 <= s <= step), step
    assert all(poll["current_image"] is None for poll in polls if poll["state"]["sampling_step"] < 5)
    assert all(poll["current_image"] is None for poll in skipping)
