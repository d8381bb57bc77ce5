"""The API formats this service speaks, in the order the app routes them (docs/design.md, "Serving"). Adding one:
a module with its parse, response and error functions and an ``ApiFormat`` record, listed here."""

from __future__ import annotations

from diffship.serve import a1111_api, openai_api
from diffship.serve.formats import ApiFormat

FORMATS: tuple[ApiFormat, ...] = (openai_api.GENERATIONS, openai_api.EDITS, a1111_api.TXT2IMG, a1111_api.IMG2IMG)
API_FORMATS: dict[str, ApiFormat] = {api.name: api for api in FORMATS}
"""By name: what ``ImageService.respond`` and the Ray gateway are told a request speaks."""

