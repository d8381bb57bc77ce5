"""The web UI's hires-fix fields on ``POST /sdapi/v1/txt2img`` (runtime/hires.py): ``enable_hr``, ``hr_scale``,
``hr_upscaler``, ``hr_second_pass_steps``, ``denoising_strength``, ``hr_resize_x``/``hr_resize_y``, ``hr_prompt``,
``hr_negative_prompt``, ``hr_sampler_name``, with the web UI's defaults (scale 2, upscaler ``Latent``, strength 0.7,
second-pass steps 0: the first pass's, empty prompts and sampler: the first pass's).

``parse`` reads them into a ``HiresFix`` under ``hires`` in the call's arguments; ``generate`` runs such a call's two
passes through the service's own queue, one after the other (each with the request's deadline), checked together
before the first one is queued. Errors name the client's fields.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.hires import WEB_UI_UPSCALERS, HiresFix, plan_hires
from diffship.runtime.pipeline import GenerationResult
from diffship.serve.fields import ApiInputError, take

if TYPE_CHECKING:
    from diffship.serve.service import Disconnected, ImageService

HIRES = "hires"
"""The key a hires request travels under in the parsed arguments (not a ``Pipeline.prepare`` argument)."""


def parse(body: dict[str, Any]) -> dict[str, Any]:
    """``{"hires": HiresFix}`` when ``enable_hr`` is set, else nothing; the fields' types and values checked."""
    if not take(body, "enable_hr", (bool, int), False):
        return {}
    from diffship.serve.a1111_api import sampler_for

    upscaler = take(body, "hr_upscaler", str, "Latent") or "Latent"
    if upscaler not in WEB_UI_UPSCALERS:
        raise ApiInputError(f"hr_upscaler {upscaler!r:.40} is not one of this server's: {', '.join(WEB_UI_UPSCALERS)}")
    resize = (take(body, "hr_resize_y", int, 0), take(body, "hr_resize_x", int, 0))
    if min(resize) < 0:
        raise ApiInputError(f"hr_resize_x and hr_resize_y must be 0 (use hr_scale) or pixels, got {resize[1]}, "
                            f"{resize[0]}")
    steps = take(body, "hr_second_pass_steps", int, 0)
    if steps < 0:
        raise ApiInputError(f"hr_second_pass_steps must be 0 (the first pass's steps) or more, got {steps}")
    sampler = take(body, "hr_sampler_name", str)
    try:
        hires = HiresFix(scale=float(take(body, "hr_scale", (int, float), 2.0)), upscaler=upscaler,
                         strength=float(take(body, "denoising_strength", (int, float), 0.7)), steps=steps or None,
                         scheduler=None if not sampler or sampler == "Use same sampler"
                         else sampler_for(sampler, take(body, "hr_scheduler", str)),
                         prompt=take(body, "hr_prompt", str) or None,
                         negative_prompt=take(body, "hr_negative_prompt", str) or None,
                         size=resize if any(resize) else None)
    except ApiInputError:
        raise
    except PipelineInputError as exc:
        raise ApiInputError(f"hr_scale: {exc}") from None
    return {HIRES: hires}


async def generate(service: ImageService, arguments: dict[str, Any], disconnected: Disconnected,
                   timeout_s: float | None) -> GenerationResult:
    """Both passes of a hires call, through ``service``'s queue."""
    assert service.pipeline is not None, "start() first"
    arguments = dict(arguments)
    hires: HiresFix = arguments.pop(HIRES)
    prompt = arguments.pop("prompt")
    try:
        plan = await asyncio.to_thread(plan_hires, service.pipeline, prompt, hires, arguments)
    except PipelineInputError as exc:
        message = str(exc)
        if message.startswith(("hires scale", "hires size", "the hires pass")):
            raise ApiInputError(f"{'hr_resize_x/hr_resize_y' if hires.size else 'hr_scale'}: {message}") from None
        raise
    done = await service.generate(plan.first, disconnected, timeout_s)
    calls = await asyncio.to_thread(plan.second, done)
    finished = [await service.generate(call, disconnected, timeout_s) for call in calls]
    return plan.finish(done, finished)
