"""OpenAI's Images API as the official ``openai`` client drives it, on a real socket: ``images.edit`` (multipart image
and mask = inpainting; no mask = image-to-image), ``output_format`` png/jpeg/webp with ``output_compression``, and
``models.list``/``models.retrieve`` naming the served packages."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from diffship.runtime import Pipeline
from diffship.runtime.infotext import infotext
from diffship.serve.app import create_app
from diffship.serve.local import serve_in_thread
from diffship.serve.models import ModelSet
from diffship.serve.service import ImageService, ServeConfig
from diffship.serve.webui_routes import WebUi
from tests.serve.test_app import decode

STEPS = {"steps": 3, "seed": 6, "guidance_scale": 6.0}


@contextlib.contextmanager
def openai_client(pipe: Pipeline, packages: tuple[Path, ...]) -> Iterator[tuple[openai.OpenAI, str]]:
    service = ImageService(ServeConfig(package=packages[0], timeout_s=120.0, warmup=False), pipeline=pipe)
    with serve_in_thread(create_app(service, web_ui=WebUi(service, ModelSet(packages)))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="not-checked", max_retries=0), url


def png_file(image: Image.Image) -> tuple[str, bytes, str]:
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return ("picture.png", encoded.getvalue(), "image/png")


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def circle(inside: int, outside: int) -> np.ndarray:
    return np.where(np.hypot(*np.mgrid[-32:32, -32:32]) < 18, inside, outside).astype(np.uint8)


def test_openai_images_edit_with_a_mask_is_inpainting_of_its_transparent_part(
        serve_pipe: Pipeline, tiny_package: Path, picture: Image.Image) -> None:
    rgba = np.dstack([np.full((64, 64, 3), 255, np.uint8), circle(0, 255)])  # OpenAI: transparent = edit
    with openai_client(serve_pipe, (tiny_package,)) as (client, _):
        edited = client.images.edit(image=png_file(picture), mask=png_file(Image.fromarray(rgba)), prompt="a moon",
                                    size="64x64", response_format="b64_json", extra_body=STEPS)
        grey = client.images.edit(image=png_file(picture), mask=png_file(Image.fromarray(circle(255, 0))),
                                  prompt="a moon", response_format="b64_json", extra_body=STEPS)
    expected = serve_pipe("a moon", image=picture, mask_image=Image.fromarray(circle(255, 0)), num_inference_steps=3,
                          seed=6, guidance_scale=6.0)
    assert edited.data is not None and grey.data is not None and edited.data[0].b64_json and grey.data[0].b64_json
    pixels, recorded = decode(edited.data[0].b64_json)
    np.testing.assert_array_equal(pixels, expected.images[0])
    assert recorded["task"] == "inpaint"
    np.testing.assert_array_equal(decode(grey.data[0].b64_json)[0], expected.images[0])  # no alpha: white = edit


def test_openai_images_edit_without_a_mask_is_image_to_image(serve_pipe: Pipeline, tiny_package: Path,
                                                               picture: Image.Image) -> None:
    with openai_client(serve_pipe, (tiny_package,)) as (client, _):
        default = client.images.edit(image=[png_file(picture)], prompt="a storm", response_format="b64_json",
                                     extra_body=STEPS)
        strong = client.images.edit(image=png_file(picture), prompt="a storm", response_format="b64_json",
                                    extra_body={**STEPS, "strength": 0.5})
    for answer, strength in ((default, 0.75), (strong, 0.5)):
        expected = serve_pipe("a storm", image=picture, strength=strength, num_inference_steps=3, seed=6,
                              guidance_scale=6.0)
        assert answer.data is not None and answer.data[0].b64_json
        pixels, recorded = decode(answer.data[0].b64_json)
        np.testing.assert_array_equal(pixels, expected.images[0])
        assert recorded["task"] == "img2img" and recorded["strength"] == strength


@pytest.mark.parametrize(("output_format", "compression"), [("jpeg", 80), ("webp", 60), ("jpeg", None)])
def test_openai_output_format_jpeg_and_webp_at_output_compression(
        serve_pipe: Pipeline, tiny_package: Path, output_format: str, compression: int | None) -> None:
    extra = {"output_compression": compression} if compression is not None else {}
    with openai_client(serve_pipe, (tiny_package,)) as (client, _):
        answer = client.images.generate(prompt="a lake", size="64x64", output_format=output_format,  # type: ignore[arg-type]
                                        response_format="b64_json", extra_body=STEPS, **extra)  # type: ignore[arg-type]
    expected = serve_pipe("a lake", height=64, width=64, num_inference_steps=3, seed=6, guidance_scale=6.0)
    reference = io.BytesIO()
    Image.fromarray(expected.images[0]).save(reference, format=output_format.upper(), quality=compression or 100)
    assert answer.output_format == output_format and answer.data is not None and answer.data[0].b64_json
    with Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))) as got, Image.open(reference) as want:
        assert got.format == output_format.upper()
        np.testing.assert_array_equal(np.asarray(got.convert("RGB")), np.asarray(want.convert("RGB")))
        comment = got.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + infotext(expected.parameters[0]).encode("utf-16-be")


def test_openai_output_format_refusals_name_the_field(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with openai_client(serve_pipe, (tiny_package,)) as (client, _):
        with pytest.raises(openai.UnprocessableEntityError) as gif:
            client.images.generate(prompt="a", output_format="gif", response_format="b64_json")  # type: ignore[arg-type]
        with pytest.raises(openai.UnprocessableEntityError) as compression:
            client.images.generate(prompt="a", output_format="jpeg", output_compression=101,
                                   response_format="b64_json")
    assert "output_format must be png, jpeg or webp, got 'gif'" in str(gif.value)
    assert "output_compression must be from 0 to 100, got 101" in str(compression.value)


def test_openai_models_list_names_the_served_packages(serve_pipe: Pipeline, tiny_package: Path,
                                                      tiny_v_package: Path) -> None:
    with openai_client(serve_pipe, (tiny_package, tiny_v_package)) as (client, url):
        listed = [model.id for model in client.models.list()]
        one = client.models.retrieve(tiny_v_package.name)
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("dall-e-3")
        broken = httpx.post(f"{url}/v1/images/edits", content=b"--x\r\nnot a form",
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert listed == [tiny_package.name, tiny_v_package.name]
    assert one.id == tiny_v_package.name and one.owned_by == "diffship"
    assert "'dall-e-3' is not served here" in str(missing.value)
    assert broken.status_code == 422 and "error" in broken.json()


def test_openai_model_naming_another_served_package_is_refused(serve_pipe: Pipeline, tiny_package: Path,
                                                                tiny_v_package: Path) -> None:
    with openai_client(serve_pipe, (tiny_package, tiny_v_package)) as (client, _):
        with pytest.raises(openai.UnprocessableEntityError) as other:
            client.images.generate(model=tiny_v_package.name, prompt="a", response_format="b64_json")
        served = client.images.generate(model=tiny_package.name, prompt="a", size="64x64", response_format="b64_json",
                                        extra_body={"steps": 1})
        default = client.images.generate(model="dall-e-3", prompt="a", size="64x64", response_format="b64_json",
                                         extra_body={"steps": 1})
    assert f"model '{tiny_v_package.name}' is served here but '{tiny_package.name}' is loaded now" in str(other.value)
    assert served.data and default.data


def test_oversized_images_are_refused_from_their_header(serve_pipe: Pipeline, tiny_package: Path) -> None:
    huge = io.BytesIO()
    Image.new("L", (5000, 4000)).save(huge, format="PNG")  # 20 Mpx in a few KB
    with openai_client(serve_pipe, (tiny_package,)) as (client, url):
        with pytest.raises(openai.UnprocessableEntityError) as edit:
            client.images.edit(image=("huge.png", huge.getvalue(), "image/png"), prompt="a", response_format="b64_json")
        info = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": base64.b64encode(huge.getvalue()).decode()})
    assert "image is 5000x4000 pixels; at most 16777216 pixels (4096x4096) are taken" in str(edit.value)
    assert info.status_code == 422 and "image is 5000x4000 pixels" in info.text
