"""``POST /sdapi/v1/txt2img`` as AUTOMATIC1111's web UI API has it, which many existing clients speak: ``prompt``,
``negative_prompt``, ``steps``, ``cfg_scale``, ``width``, ``height``, ``seed`` (-1: random), ``sampler_name`` (the web
UI's names: ``Euler a``, ``DPM++ 2M Karras``, ...; ``scheduler: "Karras"`` as newer clients send it), ``batch_size``,
``n_iter``, ``eta`` -> base64 PNGs and an ``info`` JSON string with the seeds and infotexts. The web UI's other fields
are accepted and ignored unless they ask for something this server does not do (face restoration, tiling, variation
seeds, styles, scripts), which answers 422 naming the field. The hires fix (``enable_hr`` and its ``hr_*`` fields) is
serve/hires_fields.py. Absent ``width``/``height``/``sampler_name``
mean the package's own default size and scheduler; absent ``steps`` means the web UI's 20.

``POST /sdapi/v1/img2img`` adds ``init_images`` (one base64 image), ``denoising_strength`` (default 0.75), and for
inpainting ``mask`` (base64; white is repainted), ``inpainting_mask_invert``, ``inpaint_full_res`` with
``inpaint_full_res_padding`` (diffusers' ``padding_mask_crop``). Only ``resize_mode`` 0 (just resize) is done;
``mask_blur`` and ``inpainting_fill`` are ignored, as diffusers' pipelines have no such steps. Without width and height
the image's own size is used (rounded down to a multiple of 8)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from diffship.runtime.images import png_bytes
from diffship.runtime.pipeline import GenerationResult
from diffship.runtime.schedulers import NOT_IMPLEMENTED, SHORT_NAMES, WEB_UI_NAMES
from diffship.serve import hires_fields
from diffship.serve.fields import ApiInputError, check_object, take
from diffship.serve.formats import ApiFormat, Listing

DEFAULT_STEPS = 20
UNSUPPORTED = {
    "restore_faces": "face restoration", "tiling": "tiling",
    "styles": "styles", "script_name": "scripts", "alwayson_scripts": "scripts",
}
"""Fields whose non-empty value asks for something this server does not do."""
SCHEDULER_SUFFIXES = {"automatic": "", "karras": " Karras"}


def parse(body: Any) -> dict[str, Any]:
    body = check_object(body)
    for field, feature in UNSUPPORTED.items():
        if body.get(field):
            raise ApiInputError(f"{field}: {feature} is not supported by this server; leave it out or empty")
    if (take(body, "subseed_strength", (int, float), 0) or 0) > 0:
        raise ApiInputError("subseed_strength: variation seeds are not supported by this server; leave it at 0")
    seed = take(body, "seed", int, -1)
    batch_size, n_iter = take(body, "batch_size", int, 1), take(body, "n_iter", int, 1)
    for name, value in (("batch_size", batch_size), ("n_iter", n_iter)):
        if value < 1:
            raise ApiInputError(f"{name} must be an integer >= 1, got {value}")
    # n_iter batches of batch_size: the web UI's seeds run on across batches, so this is one call of all the images.
    arguments: dict[str, Any] = {
        "prompt": take(body, "prompt", str, ""),
        "negative_prompt": take(body, "negative_prompt", str, "") or None,
        "num_inference_steps": take(body, "steps", int, DEFAULT_STEPS),
        "guidance_scale": take(body, "cfg_scale", (int, float), 7.0),
        "seed": None if seed == -1 else seed,
        "num_images_per_prompt": batch_size * n_iter,
    }
    for field in ("width", "height"):
        value = take(body, field, int)
        if value is not None:
            arguments[field] = value
    sampler = sampler_for(take(body, "sampler_name", str) or take(body, "sampler_index", str),
                          take(body, "scheduler", str))
    if sampler is not None:
        arguments["scheduler"] = sampler
    eta = take(body, "eta", (int, float))
    if eta is not None:
        arguments["eta"] = eta
    return arguments | hires_fields.parse(body)  # enable_hr and its hr_* fields (serve/hires_fields.py)


def parse_img2img(body: Any) -> dict[str, Any]:
    arguments = parse(body)
    images = take(body, "init_images", list)
    if not images or len(images) != 1 or not isinstance(images[0], str):
        raise ApiInputError("init_images must be a list of exactly one base64-encoded image")
    arguments["image"] = decode_image(images[0], "init_images[0]")
    arguments["strength"] = take(body, "denoising_strength", (int, float), 0.75)
    if take(body, "resize_mode", int, 0) != 0:
        raise ApiInputError("resize_mode: only 0 (just resize) is supported by this server")
    mask = take(body, "mask", str)
    if mask:
        from PIL import ImageOps

        decoded = decode_image(mask, "mask").convert("L")
        arguments["mask_image"] = ImageOps.invert(decoded) if take(body, "inpainting_mask_invert", int, 0) else decoded
        if take(body, "inpaint_full_res", (bool, int), False):
            arguments["padding_mask_crop"] = take(body, "inpaint_full_res_padding", int, 32)
    return arguments


def decode_image(value: str, name: str) -> Any:
    """A base64 image (a ``data:image/...;base64,`` prefix allowed) as a PIL image."""
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    encoded = "".join((value.split(",", 1)[1] if value.startswith("data:") else value).split())  # wrapped lines too
    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
            image.load()
            return image.copy()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise ApiInputError(f"{name} is not a base64-encoded PNG or JPEG image ({type(exc).__name__})") from None


def sampler_for(name: str | None, scheduler: str | None) -> str | None:
    """The web UI's sampler (and scheduler) as a name ``Pipeline`` takes; None: the package's own."""
    if not name:
        return None
    suffix = SCHEDULER_SUFFIXES.get((scheduler or "automatic").lower())
    if suffix is None:
        raise ApiInputError(f"scheduler must be Automatic or Karras here, got {scheduler!r:.40}")
    full = name if name.lower().endswith(suffix.lower()) else name + suffix
    known = {key.lower(): key for key in WEB_UI_NAMES}
    if full.lower() in known:
        return known[full.lower()]
    if name in NOT_IMPLEMENTED:
        raise ApiInputError(f"sampler_name {name!r} is not implemented here ({NOT_IMPLEMENTED[name]})")
    raise ApiInputError(f"sampler_name {full!r:.40} is not one of {', '.join(WEB_UI_NAMES)}")


def response(result: GenerationResult, body: dict[str, Any], model_name: str) -> dict[str, Any]:
    first = result.parameters[0]
    infotexts = [infotext(parameters, model_name) for parameters in result.parameters]
    info = {
        "prompt": first["prompt"], "all_prompts": [p["prompt"] for p in result.parameters],
        "negative_prompt": first.get("negative_prompt", ""),
        "all_negative_prompts": [p.get("negative_prompt", "") for p in result.parameters],
        "seed": first["seed"], "all_seeds": result.seeds, "subseed": -1, "all_subseeds": [-1] * len(result.seeds),
        "subseed_strength": 0, "width": first["width"], "height": first["height"],
        "sampler_name": web_ui_name(first["scheduler"]), "cfg_scale": first["guidance_scale"], "steps": first["steps"],
        "batch_size": len(result.images), "restore_faces": False, "sd_model_name": model_name,
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "version": "diffship",
    }
    return {
        "images": [base64.b64encode(png_bytes(image, parameters)).decode("ascii")
                   for image, parameters in zip(result.images, result.parameters, strict=True)],
        "parameters": {**body, **{key: None for key in ("init_images", "mask") if key in body}},
        "info": json.dumps(info),
    }


def infotext(parameters: dict[str, Any], model_name: str) -> str:
    """The web UI's one-paragraph description of an image (what its PNG info and clients show)."""
    lines = [parameters["prompt"]]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    lines.append(f"Steps: {parameters['steps']}, Sampler: {web_ui_name(parameters['scheduler'])}, CFG scale: "
                 f"{parameters['guidance_scale']:g}, Seed: {parameters['seed']}, Size: {parameters['width']}x"
                 f"{parameters['height']}{hires_fields.infotext(parameters)}, Model: {model_name}, Version: diffship")
    return "\n".join(lines)


def web_ui_name(scheduler: str) -> str:
    """The web UI's name for a scheduler as the parameters record it (a diffusers class name when the package's own
    ran: ``PNDMScheduler`` is the web UI's ``PLMS``); unchanged when it has none."""
    return _WEB_UI_BY_CLASS.get(scheduler, scheduler)


_WEB_UI_BY_CLASS = {SHORT_NAMES[short][0]: name for name, short in WEB_UI_NAMES.items() if not SHORT_NAMES[short][1]}


def samplers(model_name: str = "") -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` (every model has them all)."""
    return [{"name": name, "aliases": [short], "options": {}} for name, short in WEB_UI_NAMES.items()]


def sd_models(model_name: str) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/sd-models``: the one model this server serves."""
    return [{"title": model_name, "model_name": model_name, "hash": None, "filename": model_name}]


def error(message: str, kind: str) -> dict[str, Any]:
    """The web UI's (FastAPI's) error body."""
    return {"error": kind, "detail": message, "body": None, "errors": message}


TXT2IMG = ApiFormat("a1111", "/sdapi/v1/txt2img", parse, response, error,
                    listings=(Listing("/sdapi/v1/samplers", samplers), Listing("/sdapi/v1/sd-models", sd_models)))
IMG2IMG = ApiFormat("a1111_img2img", "/sdapi/v1/img2img", parse_img2img, response, error)
