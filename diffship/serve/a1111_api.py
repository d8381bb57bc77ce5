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
from diffship.runtime.infotext import infotext, web_ui_sampler
from diffship.runtime.pipeline import GenerationResult
from diffship.runtime.schedulers import NOT_IMPLEMENTED, SHORT_NAMES, WEB_UI_NAMES
from diffship.serve import hires_fields
from diffship.serve.fields import ApiInputError, check_object, take
from diffship.serve.formats import ApiFormat, Listing
from diffship.serve.progress import CURRENT_JOB, PREVIEW_EVERY
from diffship.serve.prompt_loras import tagged

DEFAULT_STEPS = 20
UNSUPPORTED = {
    "restore_faces": "face restoration", "tiling": "tiling",
    "styles": "styles", "script_name": "scripts", "alwayson_scripts": "scripts",
}
"""Fields whose non-empty value asks for something this server does not do."""
SCHEDULER_SUFFIXES = {"automatic": "", "karras": " Karras"}
OPTIONS: dict[str, Any] = {"sd_checkpoint_hash": None, "samples_format": "png", "CLIP_stop_at_last_layers": 1,
                           "eta_noise_seed_delta": 0, "sd_vae": "Automatic",
                           "show_progress_every_n_steps": PREVIEW_EVERY}
"""The web UI's options as this server has them (``GET /sdapi/v1/options`` adds ``sd_model_checkpoint``): a request's
``override_settings`` may restate them; ``CLIP_stop_at_last_layers`` is the call's ``clip_skip`` plus one."""
WEB_UI_DEFAULT_SAMPLER = "Euler"
"""The web UI API's ``sampler_index`` default: the sampler it runs when a request names none."""


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
    arguments |= hires_fields.parse(body)  # enable_hr and its hr_* fields (serve/hires_fields.py)
    return _overridden(take(body, "override_settings", dict) or {}, arguments)


def _overridden(settings: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """``override_settings``: the model must be the one served (switch with ``POST /sdapi/v1/options``), clip skip
    becomes the call's, any other option may only restate this server's value (never ignored silently)."""
    job = CURRENT_JOB.get()
    for key, value in settings.items():
        if key == "sd_model_checkpoint":
            served = job.model if job is not None else ""
            if not isinstance(value, str) or value.split(" [", 1)[0].strip() not in (served, f"{served}.safetensors"):
                raise ApiInputError(f"override_settings.sd_model_checkpoint {value!r:.80} is not the model served now "
                                    f"({served or 'unknown here'}); switch with POST /sdapi/v1/options first")
        elif key == "CLIP_stop_at_last_layers":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ApiInputError(f"override_settings.CLIP_stop_at_last_layers must be an integer >= 1, got "
                                    f"{value!r:.40}")
            arguments["clip_skip"] = value - 1
        elif OPTIONS.get(key, object()) != value:
            raise ApiInputError(f"override_settings.{key:.60}: this server cannot change it per request; it takes "
                                f"sd_model_checkpoint (the served model), CLIP_stop_at_last_layers, and the values of "
                                f"GET /sdapi/v1/options")
    return arguments


def _tracked(arguments: dict[str, Any]) -> dict[str, Any]:
    """The request's web-UI job (``serve.progress``), if it has one, sees each step (and its previews, where the
    family has them) and may stop the call."""
    job = CURRENT_JOB.get()
    if job is None:
        return arguments
    steps = arguments["num_inference_steps"]
    strength = arguments.get("strength")
    # image-to-image runs the last part of the schedule that denoising_strength keeps, as diffusers counts it
    job.steps = steps if strength is None else max(1, min(int(steps * strength), steps))
    previews = {"progress": job.progressed, "preview_every": job.preview_every} if job.preview_every else {}
    return {**arguments, "callback": job.step_done, "cancel": job.stopped, **previews}


def parse_txt2img(body: Any) -> dict[str, Any]:
    return tagged(_tracked(parse(body)))


def parse_img2img(body: Any) -> dict[str, Any]:
    return tagged(_tracked(_img2img_arguments(body)))


def _img2img_arguments(body: Any) -> dict[str, Any]:
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
        # the web UI's clients send 0/1 (its UI's radio index) or true/false
        invert = take(body, "inpainting_mask_invert", (bool, int), 0)
        if invert not in (0, 1):
            raise ApiInputError(f"inpainting_mask_invert must be 0 or 1 (or false/true), got {invert}")
        arguments["mask_image"] = ImageOps.invert(decoded) if invert else decoded
        if take(body, "inpaint_full_res", (bool, int), False):
            arguments["padding_mask_crop"] = take(body, "inpaint_full_res_padding", int, 32)
    return arguments


def decode_image(value: str, name: str) -> Any:
    """A base64 PNG, JPEG or WebP image (serve/images.py: format by its first bytes, pixels from its header before
    decoding) as a loaded PIL image."""
    from diffship.serve.images import decode_base64_image

    return decode_base64_image(value, name)


def sampler_for(name: str | None, scheduler: str | None) -> str | None:
    """The web UI's sampler (and scheduler) as a name ``Pipeline`` takes; None: the package's own. A ``scheduler``
    other than Automatic without a sampler applies to the web UI's own default sampler (its API's ``sampler_index``
    default, Euler), as the web UI does."""
    suffix = SCHEDULER_SUFFIXES.get((scheduler or "automatic").lower())
    if suffix is None:
        raise ApiInputError(f"scheduler must be Automatic or Karras here, got {scheduler!r:.40}")
    if not name:
        if not suffix:
            return None
        name = WEB_UI_DEFAULT_SAMPLER
    full = name if name.lower().endswith(suffix.lower()) else name + suffix
    known = {key.lower(): key for key in WEB_UI_NAMES}
    if full.lower() in known:
        return known[full.lower()]
    # newer web UIs split "Schedule type" from the sampler: Euler + Karras is diffusers' Euler with Karras sigmas
    short = WEB_UI_NAMES.get(known.get(name.lower(), ""), "") + "_karras"
    if suffix and short in SHORT_NAMES:
        return short
    if name in NOT_IMPLEMENTED:
        raise ApiInputError(f"sampler_name {name!r} is not implemented here ({NOT_IMPLEMENTED[name]})")
    raise ApiInputError(f"sampler_name {full!r:.40} is not one of {', '.join(WEB_UI_NAMES)}")


def response(result: GenerationResult, body: dict[str, Any], model_name: str) -> dict[str, Any]:
    first = result.parameters[0]
    infotexts = [infotext(parameters) for parameters in result.parameters]
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


def web_ui_name(scheduler: str) -> str:
    """The web UI's name for a scheduler as the parameters record it (see ``runtime.infotext.web_ui_sampler``)."""
    return web_ui_sampler(scheduler)


def samplers(model_name: str = "") -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers`` (every model has them all)."""
    return [{"name": name, "aliases": [short], "options": {}} for name, short in WEB_UI_NAMES.items()]


def error(message: str, kind: str) -> dict[str, Any]:
    """The web UI's (FastAPI's) error body."""
    return {"error": kind, "detail": message, "body": None, "errors": message}


TXT2IMG = ApiFormat("a1111", "/sdapi/v1/txt2img", parse_txt2img, response, error,
                    listings=(Listing("/sdapi/v1/samplers", samplers),))
IMG2IMG = ApiFormat("a1111_img2img", "/sdapi/v1/img2img", parse_img2img, response, error)
"""The web UI's other routes (progress, interrupt, options, models, LoRAs, PNG info, ...): ``serve/webui_routes.py``."""
