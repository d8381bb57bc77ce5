"""PNGs carry the web UI's infotext in their ``parameters`` chunk, in the shape its own reader takes apart, and
diffship's JSON in a chunk of its own; PNGs written before (JSON in ``parameters``) are still read."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.images import png_bytes, read_parameters, save_png
from diffship.runtime.infotext import infotext, parse_infotext, web_ui_sampler
from tests.fakes import NumpyBackend, write_package

# The web UI's reader (modules/infotext_utils.py, parse_generation_parameters), as its source has it: the last line
# holds the key: value pairs when it has at least three; a value in double quotes is JSON; WxH splits in two.
WEB_UI_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def web_ui_parse(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(WEB_UI_PAIR.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"], result["Negative prompt"] = prompt, negative
    for key, value in WEB_UI_PAIR.findall(lastline):
        if value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        size = re.match(r"^(\d+)x(\d+)$", value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    register_backend("numpy-infotext", NumpyBackend)
    return Pipeline.from_package(write_package(tmp_path_factory.mktemp("fake") / "pkg"), backend="numpy-infotext")


def test_infotext_png_parameters_read_back_by_the_web_uis_parser(pipe: Pipeline, tmp_path: Path) -> None:
    result = pipe("a red fox, in snow: at dusk\nsecond line", negative_prompt="blurry, dark", num_inference_steps=3,
                  guidance_scale=6.5, seed=41, scheduler="DPM++ 2M Karras", height=64, width=128)
    path = save_png(result.images[0], tmp_path / "fox.png", result.parameters[0])
    with Image.open(path) as png:
        chunks = dict(png.text)  # type: ignore[attr-defined]
    parsed = web_ui_parse(chunks["parameters"])
    model = result.parameters[0]["model"]
    assert parsed["Prompt"] == "a red fox, in snow: at dusk\nsecond line"
    assert parsed["Negative prompt"] == "blurry, dark"
    assert {key: parsed.get(key) for key in ("Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2")} == {
        "Steps": "3", "Sampler": "DPM++ 2M Karras", "CFG scale": "6.5", "Seed": "41", "Size-1": "128", "Size-2": "64"}
    assert parsed.get("Model hash") == ((model.get("weights_sha256") or "")[:10] or None)
    assert parsed.get("Model") == model.get("name")
    assert parse_infotext(chunks["parameters"]) == parsed  # /sdapi/v1/png-info reads it as the web UI does
    assert json.loads(chunks["diffship"]) == result.parameters[0] == read_parameters(path)


def test_infotext_quotes_values_that_would_break_the_web_uis_parser_and_tags_loras_in_the_prompt() -> None:
    parameters = {"prompt": "a", "steps": 2, "scheduler": "PNDMScheduler", "guidance_scale": 7.0, "seed": 1,
                  "width": 64, "height": 64, "strength": 0.75,
                  "model": {"name": "org/model:v2, final", "weights_sha256": "0123456789abcdef"},
                  "loras": ["ink.safetensors:0.8", "film.safetensors:1"]}
    parsed = web_ui_parse(infotext(parameters))
    assert parsed["Model"] == "org/model:v2, final" and parsed["Model hash"] == "0123456789"
    assert parsed["Prompt"] == "a <lora:ink:0.8> <lora:film:1>" and parsed["Sampler"] == "PLMS"
    assert parsed["Denoising strength"] == "0.75" and parsed["CFG scale"] == "7"


@pytest.mark.parametrize(("recorded", "web_ui"), [("PNDMScheduler", "PLMS"), ("dpmpp_2m_karras", "DPM++ 2M Karras"),
                                                  ("euler a", "Euler a"), ("euler_karras", "Euler Karras"),
                                                  ("LCMScheduler", "LCM"), ("MyScheduler", "MyScheduler")])
def test_infotext_names_samplers_as_the_web_ui_does(recorded: str, web_ui: str) -> None:
    assert web_ui_sampler(recorded) == web_ui


def test_read_parameters_reads_pngs_written_before_the_infotext(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps({"prompt": "old", "seed": 3}))
    Image.new("RGB", (8, 8)).save(tmp_path / "old.png", pnginfo=info)
    assert read_parameters(tmp_path / "old.png") == {"prompt": "old", "seed": 3}


def test_a_contact_sheets_png_carries_only_the_json() -> None:
    raw = png_bytes(np.zeros((8, 8, 3), np.uint8), {"grid": {"rows": "seed"}})
    with Image.open(io.BytesIO(raw)) as png:
        assert set(png.text) == {"diffship"}  # type: ignore[attr-defined]
