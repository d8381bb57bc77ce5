"""``POST /v1/images/generations`` as OpenAI's Images API has it: ``prompt``, ``n``, ``size``, ``response_format``
(``b64_json`` only: this server keeps no files to link to), ``model`` (ignored: one package per server). Extension
fields: ``negative_prompt``, ``steps``, ``guidance_scale``, ``seed``, ``scheduler`` (pass them with the official
client's ``extra_body``)."""

from __future__ import annotations

import base64
import time
from typing import Any

from diffship.runtime.images import png_bytes
from diffship.runtime.pipeline import GenerationResult
from diffship.serve.fields import ApiInputError, check_object, size_pair, take
from diffship.serve.formats import ApiFormat

MAX_N = 10
IGNORED = ("model", "quality", "style", "user", "moderation", "background", "output_compression")
"""OpenAI fields that say nothing this server can act on: accepted and ignored."""
EXTENSION_ARGUMENTS: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("negative_prompt", "negative_prompt", str), ("steps", "num_inference_steps", int),
    ("guidance_scale", "guidance_scale", (int, float)), ("seed", "seed", int), ("scheduler", "scheduler", str),
)
"""(field, Pipeline argument, JSON type)."""
EXTENSIONS = tuple(field for field, _, _ in EXTENSION_ARGUMENTS)
KNOWN = ("prompt", "n", "size", "response_format", "output_format", *IGNORED, *EXTENSIONS)


def parse(body: Any) -> dict[str, Any]:
    """The Pipeline arguments an OpenAI-style request asks for."""
    body = check_object(body)
    unknown = sorted(set(body) - set(KNOWN))
    if unknown:
        raise ApiInputError(f"unknown field(s) {', '.join(unknown)}; this endpoint takes {', '.join(KNOWN)}")
    prompt = take(body, "prompt", str)
    if prompt is None:
        raise ApiInputError("prompt is required (the text to draw)")
    n = take(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise ApiInputError(f"n must be from 1 to {MAX_N}, got {n}")
    if take(body, "response_format", str, "b64_json") != "b64_json":
        raise ApiInputError("response_format must be b64_json: this server keeps no files to link to")
    if take(body, "output_format", str, "png") != "png":
        raise ApiInputError("output_format must be png (the generation parameters travel in its text chunk)")
    arguments: dict[str, Any] = {"prompt": prompt, "num_images_per_prompt": n}
    size = take(body, "size", str, "auto")
    if size != "auto":
        arguments["width"], arguments["height"] = size_pair(size)
    for field, argument, kind in EXTENSION_ARGUMENTS:
        value = take(body, field, kind)
        if value is not None:
            arguments[argument] = value
    return arguments


def response(result: GenerationResult, body: Any = None, model_name: str = "") -> dict[str, Any]:
    first = result.parameters[0]
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(png_bytes(image, parameters)).decode("ascii"),
                  "revised_prompt": parameters["prompt"]}
                 for image, parameters in zip(result.images, result.parameters, strict=True)],
        "output_format": "png",
        "size": f"{first['width']}x{first['height']}",
    }


def error(message: str, kind: str) -> dict[str, Any]:
    """OpenAI's error body (the official client raises it as ``openai.APIStatusError`` with this message)."""
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


GENERATIONS = ApiFormat("openai", "/v1/images/generations", parse, response, error)
