"""``POST /v1/images/generations`` as OpenAI's Images API has it: ``prompt``, ``n``, ``size``, ``response_format``
(``b64_json`` only: this server keeps no files to link to), ``output_format`` (``png``, with the generation parameters
in its text chunks; ``jpeg`` or ``webp`` at ``output_compression``, PIL's quality, 100 by default as OpenAI's),
``model`` (ignored, unless it names another package this server serves: refused, as that is not what would run;
``GET /v1/models`` lists them). Extension fields:
``negative_prompt``, ``steps``, ``guidance_scale``, ``seed``, ``scheduler`` (pass them with the official client's
``extra_body``).

``POST /v1/images/edits`` (``images.edit``): the same fields and ``image`` with an optional ``mask``, as multipart
form data (what the official client sends; ``serve/openai_edits.py`` turns it into JSON) or JSON with base64 images.
With a mask: inpainting of the mask's transparent part (OpenAI's rule), or of its white part when the mask has no
alpha channel (diffusers' and the web UI's rule); without one: the image's transparent part if it has one, else
image-to-image at ``strength`` (extension field, default 0.75)."""

from __future__ import annotations

import base64
import time
from typing import Any

from diffship.runtime.images import png_bytes
from diffship.runtime.pipeline import GenerationResult
from diffship.serve.fields import ApiInputError, check_object, size_pair, take
from diffship.serve.formats import ApiFormat
from diffship.serve.models import SERVED
from diffship.serve.prompt_loras import tagged

MAX_N = 10
IGNORED = ("model", "quality", "style", "user", "moderation", "background", "input_fidelity", "safety_identifier")
"""OpenAI fields that say nothing this server can act on: accepted and ignored."""
EXTENSION_ARGUMENTS: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("negative_prompt", "negative_prompt", str), ("steps", "num_inference_steps", int),
    ("guidance_scale", "guidance_scale", (int, float)), ("seed", "seed", int), ("scheduler", "scheduler", str),
    ("guidance_cutoff", "guidance_cutoff", (int, float)), ("guidance_interval", "guidance_interval", list),
    ("cache_interval", "cache_interval", int), ("cache_schedule", "cache_schedule", str),
    ("cache_center", "cache_center", int), ("vae_tiles", "vae_tiles", (str, int)),
)
"""(field, Pipeline argument, JSON type): the Python API's names, so its messages name the client's fields."""
EXTENSIONS = tuple(field for field, _, _ in EXTENSION_ARGUMENTS)
KNOWN = ("prompt", "n", "size", "response_format", "output_format", "output_compression", *IGNORED, *EXTENSIONS)
EDIT_KNOWN = (*KNOWN, "image", "mask", "strength")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_STRENGTH = 0.75


def parse(body: Any, known: tuple[str, ...] = KNOWN) -> dict[str, Any]:
    """The Pipeline arguments an OpenAI-style request asks for."""
    body = check_object(body)
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ApiInputError(f"unknown field(s) {', '.join(unknown)}; this endpoint takes {', '.join(KNOWN)}")
    _check_model(take(body, "model", str))
    prompt = take(body, "prompt", str)
    if prompt is None:
        raise ApiInputError("prompt is required (the text to draw)")
    n = take(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise ApiInputError(f"n must be from 1 to {MAX_N}, got {n}")
    if take(body, "response_format", str, "b64_json") != "b64_json":
        raise ApiInputError("response_format must be b64_json: this server keeps no files to link to")
    output_format(body)
    arguments: dict[str, Any] = {"prompt": prompt, "num_images_per_prompt": n}
    size = take(body, "size", str, "auto")
    if size != "auto":
        arguments["width"], arguments["height"] = size_pair(size)
    for field, argument, kind in EXTENSION_ARGUMENTS:
        value = take(body, field, kind)
        if value is not None:
            arguments[argument] = tuple(value) if isinstance(value, list) else value  # [low, high] -> (low, high)
    return tagged(arguments)


def _check_model(model: str | None) -> None:
    """``model`` naming another package this server serves is refused (it would not be what runs); any other name
    (``dall-e-3``, ``gpt-image-1``, as clients send by default) is ignored."""
    served = SERVED.get()
    if model and served is not None and model in served.names and model != served.current:
        raise ApiInputError(f"model {model!r} is served here but {served.current!r} is loaded now; switch with POST "
                            f"/sdapi/v1/options {{\"sd_model_checkpoint\": \"{model}\"}} or leave model out")


def output_format(body: dict[str, Any]) -> tuple[str, int]:
    """(format, quality) a request asks its images in."""
    chosen = take(body, "output_format", str, "png")
    if chosen not in OUTPUT_FORMATS:
        raise ApiInputError(f"output_format must be png, jpeg or webp, got {chosen!r:.40}")
    quality = take(body, "output_compression", int, 100)
    if not 0 <= quality <= 100:
        raise ApiInputError(f"output_compression must be from 0 to 100, got {quality}")
    return chosen, quality


def parse_edit(body: Any) -> dict[str, Any]:
    """``images.edit``: the generation fields, the image and the part of it to repaint."""
    arguments = parse(body, EDIT_KNOWN)
    images = body.get("image")
    images = images if isinstance(images, list) else [images]
    if len(images) != 1 or not isinstance(images[0], str) or not images[0]:
        raise ApiInputError("image is required: exactly one PNG, JPEG or WebP image (multipart file or base64)")
    picture = decode_image(images[0], "image")
    mask = take(body, "mask", str)
    strength = take(body, "strength", (int, float))
    repaint = _repainted(decode_image(mask, "mask")) if mask else _transparent(picture)
    arguments["image"] = picture.convert("RGB")
    if repaint is not None:
        arguments["mask_image"] = repaint
    if strength is not None or repaint is None:
        arguments["strength"] = DEFAULT_STRENGTH if strength is None else strength
    return arguments


def _repainted(mask: Any) -> Any:
    """A mask as white-is-repainted: OpenAI's transparent part, or the white part of a mask without alpha."""
    from PIL import ImageOps

    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        return ImageOps.invert(mask.convert("RGBA").getchannel("A"))
    return mask.convert("L")


def _transparent(picture: Any) -> Any:
    """The transparent part of an image (OpenAI's edit without a mask), or None when it has none."""
    if picture.mode not in ("RGBA", "LA", "PA") and not (picture.mode == "P" and "transparency" in picture.info):
        return None
    alpha = picture.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] == 255:
        return None
    from PIL import ImageOps

    return ImageOps.invert(alpha)


def decode_image(value: str, name: str) -> Any:
    """A base64 PNG, JPEG or WebP image (serve/images.py: format by its first bytes, pixels from its header before
    decoding) as a loaded PIL image."""
    from diffship.serve.images import decode_base64_image

    return decode_base64_image(value, name)


def response(result: GenerationResult, body: Any = None, model_name: str = "") -> dict[str, Any]:
    first = result.parameters[0]
    chosen, quality = output_format(body if isinstance(body, dict) else {})
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(encode(image, parameters, chosen, quality)).decode("ascii"),
                  "revised_prompt": parameters["prompt"]}
                 for image, parameters in zip(result.images, result.parameters, strict=True)],
        "output_format": chosen,
        "size": f"{first['width']}x{first['height']}",
    }


def encode(image: Any, parameters: dict[str, Any], chosen: str, quality: int) -> bytes:
    """PNG with the parameters in its text chunks; JPEG or WebP at ``quality`` with the web UI's infotext in the EXIF
    UserComment, where the web UI writes it for those formats."""
    import io

    from PIL import Image

    from diffship.runtime.infotext import infotext

    if chosen == "png":
        return png_bytes(image, parameters)
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + infotext(parameters).encode("utf-16-be")
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format=OUTPUT_FORMATS[chosen], quality=quality, exif=exif)
    return encoded.getvalue()


EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def error(message: str, kind: str) -> dict[str, Any]:
    """OpenAI's error body (the official client raises it as ``openai.APIStatusError`` with this message)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def models(names: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` (``models.list``): the packages this server serves, by folder name."""
    return {"object": "list", "data": [model(name) for name in names]}


def model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "diffship"}


GENERATIONS = ApiFormat("openai", "/v1/images/generations", parse, response, error)
EDITS = ApiFormat("openai_edit", "/v1/images/edits", parse_edit, response, error)
