"""The web UI's "infotext": the one-paragraph description of an image that AUTOMATIC1111's web UI writes into a PNG's
``parameters`` text chunk and that its PNG-info tab, model sites and other tools read back:

    a red fox
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3, Size: 512x512, Model hash: 1a2b3c4d5e, Model: sd15

written from diffship's generation parameters (``runtime.results.describe_images``), and read back the way the web
UI's ``parse_generation_parameters`` reads it (last line: ``key: value`` pairs, a value holding ``,``, ``:`` or a
line break in JSON quotes)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffship.runtime.schedulers import SHORT_NAMES, WEB_UI_NAMES

_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_BY_CLASS = {SHORT_NAMES[short][0]: name for name, short in WEB_UI_NAMES.items() if not SHORT_NAMES[short][1]}
_BY_SHORT = {short: name for name, short in WEB_UI_NAMES.items()}
_BY_LOWER = {name.lower(): name for name in WEB_UI_NAMES}


def web_ui_sampler(scheduler: str) -> str:
    """The web UI's name for a scheduler as the parameters record it (a web UI name, a short name such as
    ``dpmpp_2m_karras``, or a diffusers class name when the package's own ran: ``PNDMScheduler`` is ``PLMS``);
    unchanged when it has none."""
    known = _BY_LOWER.get(scheduler.lower()) or _BY_SHORT.get(scheduler) or _BY_CLASS.get(scheduler)
    if known is None and scheduler.endswith("_karras") and scheduler[:-7] in _BY_SHORT:
        known = f"{_BY_SHORT[scheduler[:-7]]} Karras"  # Euler with the Karras schedule, which the web UI also runs
    return known or scheduler


def infotext(parameters: Mapping[str, Any]) -> str:
    """The web UI's infotext of one image's parameters."""
    # LoRAs as the web UI writes them, tags in the prompt: pasted back into the web UI, they apply again
    tags = [f"<lora:{Path(name).stem}:{scale}>" for name, _, scale in
            (str(lora).rpartition(":") for lora in parameters.get("loras", ()))]
    lines = [" ".join([str(parameters.get("prompt", "")), *tags])]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    recorded = parameters.get("model")
    model: Mapping[str, Any] = recorded if isinstance(recorded, Mapping) else {}
    pairs: list[tuple[str, Any]] = [
        ("Steps", parameters.get("steps")), ("Sampler", web_ui_sampler(str(parameters.get("scheduler", "")))),
        ("CFG scale", _number(parameters.get("guidance_scale"))), ("Seed", parameters.get("seed")),
        ("Size", f"{parameters.get('width')}x{parameters.get('height')}"), *_hires(parameters.get("hires")),
        ("Model hash", (model.get("weights_sha256") or "")[:10] or None), ("Model", model.get("name")),
        ("Denoising strength", _number(parameters.get("strength"))), ("Eta", _number(parameters.get("eta"))),
        ("Version", "diffship"),
    ]
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in pairs if value is not None))
    return "\n".join(lines)


def _hires(hires: Any) -> list[tuple[str, Any]]:
    """The web UI's hires-fix pairs (its second pass: strength, scale or size, steps, upscaler), or none."""
    if not isinstance(hires, Mapping):
        return []
    from diffship.runtime.hires import WEB_UI_UPSCALERS

    names = {short: name for name, short in WEB_UI_UPSCALERS.items()}
    size = (("Hires upscale", _number(hires["scale"])) if "scale" in hires
            else ("Hires resize", f"{hires.get('width')}x{hires.get('height')}"))
    return [("Denoising strength", _number(hires.get("strength"))), size, ("Hires steps", hires.get("steps")),
            ("Hires upscaler", names.get(str(hires.get("upscaler")), hires.get("upscaler")))]


def parse_infotext(text: str) -> dict[str, str]:
    """An infotext as the web UI's ``parse_generation_parameters`` reads it: ``Prompt``, ``Negative prompt`` and each
    ``key: value`` of the last line (``Size`` as ``Size-1``/``Size-2``), values as strings."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line[16:].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = json.loads(value)
        size = re.fullmatch(r"(\d+)x(\d+)", value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def _quote(value: str) -> str:
    """The web UI quotes a value that would break its own parsing."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def _number(value: Any) -> str | None:
    return None if value is None else f"{value:g}" if isinstance(value, float) else str(value)
