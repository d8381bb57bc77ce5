"""The routes the clients people already run expect beside generating: OpenAI's ``/v1/models`` (and the multipart
form its ``images.edit`` sends, ``serve/openai_edits.py``), and the web UI's API beyond generating (``txt2img``/
``img2img`` are ``serve/a1111_api.py``), as its client libraries and front ends call it: they poll ``/progress`` while a request runs, stop it with ``/interrupt`` or ``/skip``, read
and set ``/options`` (``sd_model_checkpoint`` switches among the packages given with ``serve --package A --package
B``), and list models, LoRAs, embeddings, schedulers, upscalers and flags. Unknown routes answer JSON, as FastAPI does
in the web UI. Which request fields are honoured, ignored or refused: README "Serving"."""

from __future__ import annotations

import asyncio
import base64
import binascii
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from diffship.runtime.errors import PipelineInputError
from diffship.runtime.infotext import parse_infotext
from diffship.serve import a1111_api, openai_api
from diffship.serve.limits import BodyTooLarge, DoorLimits, ReadTimeout, read_body, read_json
from diffship.serve.models import ModelSet, ServedModels, current_package, switch
from diffship.serve.openai_edits import MultipartEdits
from diffship.serve.progress import PREVIEW_EVERY, JobTracking, Progress
from diffship.serve.prompt_loras import LoraContext

PREFIX = "/sdapi/v1"
TRACKED = {a1111_api.TXT2IMG.path: "txt2img", a1111_api.IMG2IMG.path: "img2img"}
LORA_SUFFIXES = (".safetensors",)
SCHEDULERS = [
    {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0, "need_inner_model": False},
    {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
]
"""The web UI's schedule types this server runs (``scheduler`` of a request)."""
UPSCALERS = [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}]
"""No upscaler: hires fix and the extras tab are refused (the web UI lists ``None`` first too)."""


class WebUi:
    """The routes, the job-tracking middleware and the JSON error handlers of the web UI's API over ``backend``."""

    def __init__(self, backend: Any, models: ModelSet | None = None, lora_dir: Path | None = None) -> None:
        package = current_package(backend)
        self.backend = backend
        self.models = models or ModelSet((package,) if package is not None else ())
        self.lora_dir = lora_dir
        self.progress = Progress()

    @property
    def routes(self) -> list[Route]:
        get, post = ["GET"], ["POST"]
        return [
            Route(f"{PREFIX}/progress", self._progress, methods=get),
            Route(f"{PREFIX}/interrupt", self._stopping(skip=False), methods=post),
            Route(f"{PREFIX}/skip", self._stopping(skip=True), methods=post),
            Route(f"{PREFIX}/options", self._options, methods=get),
            Route(f"{PREFIX}/options", self._set_options, methods=post),
            Route(f"{PREFIX}/sd-models", self._listing(self.sd_models), methods=get),
            Route(f"{PREFIX}/loras", self._listing(self.loras), methods=get),
            Route(f"{PREFIX}/embeddings", self._listing(lambda: {"loaded": {}, "skipped": {}}), methods=get),
            Route(f"{PREFIX}/schedulers", self._listing(lambda: SCHEDULERS), methods=get),
            Route(f"{PREFIX}/upscalers", self._listing(lambda: UPSCALERS), methods=get),
            Route(f"{PREFIX}/cmd-flags", self._listing(self.cmd_flags), methods=get),
            Route(f"{PREFIX}/png-info", self._png_info, methods=post),
            Route("/v1/models", self._listing(lambda: openai_api.models(self.models.names)), methods=get),
            Route("/v1/models/{name:path}", self._openai_model, methods=get),
        ]

    @property
    def middleware(self) -> list[Middleware]:
        return [Middleware(ServedModels, current=self.current, models=self.models),
                Middleware(LoraContext, backend=self.backend, lora_dir=self.lora_dir),
                Middleware(JobTracking, progress=self.progress, paths=TRACKED, model=self.current,
                           previews=self.preview_every),
                Middleware(MultipartEdits, max_bytes=self.backend.config.door.max_body_bytes)]

    # ------------------------------------------------------------------ answers

    def current(self) -> str:
        package = current_package(self.backend)
        return package.name if package is not None else self.backend.model_name()

    def preview_every(self) -> int:
        """Steps between a new job's previews: ``PREVIEW_EVERY`` where the served family has cheap previews (under
        Ray the gateway runs no pipeline: none)."""
        pipeline = getattr(self.backend, "pipeline", None)
        return PREVIEW_EVERY if pipeline is not None and pipeline.family.preview_factors else 0

    def sd_models(self) -> list[dict[str, Any]]:
        """The web UI's ``SDModelItem`` per package (named by folder: no path leaves the server)."""
        return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
                for name in self.models.names]

    def options(self) -> dict[str, Any]:
        return {"sd_model_checkpoint": self.current(), **a1111_api.OPTIONS}

    def loras(self) -> list[dict[str, Any]]:
        """The LoRA files of ``--lora-dir`` as ``<lora:NAME:WEIGHT>`` names them (their path relative to it)."""
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        files = sorted(p for p in self.lora_dir.rglob("*") if p.suffix in LORA_SUFFIXES and p.is_file())
        return [{"name": p.stem, "alias": p.stem, "path": str(p.relative_to(self.lora_dir)), "metadata": {}}
                for p in files]

    def cmd_flags(self) -> dict[str, Any]:
        return {"api": True, "nowebui": True, "lora_dir": None if self.lora_dir is None else self.lora_dir.name,
                "ckpt_dir": None, "embeddings_dir": None, "skip_version_check": True}

    # ------------------------------------------------------------------ endpoints

    async def _progress(self, request: Request) -> Response:
        """The web UI's ``ProgressRequest``: ``skip_current_image`` (default false) leaves the preview out."""
        skip = request.query_params.get("skip_current_image", "false").lower() in ("true", "1", "yes", "on")
        return JSONResponse(await asyncio.to_thread(self.progress.snapshot, skip))  # a PNG to encode

    def _stopping(self, skip: bool) -> Any:
        async def stop(request: Request) -> Response:
            self.progress.stop(skip)
            return JSONResponse({})

        return stop

    async def _options(self, request: Request) -> Response:
        return JSONResponse(self.options())

    async def _set_options(self, request: Request) -> Response:
        try:
            body = await _body(request, self.backend.config.door)
            if not isinstance(body, dict):
                raise PipelineInputError("the options must be a JSON object of option: value")
            current = self.options()
            refused = sorted(key for key, value in body.items()
                             if key != "sd_model_checkpoint" and current.get(key, object()) != value)
            if refused:
                raise PipelineInputError(f"{', '.join(refused)}: only sd_model_checkpoint can be changed on this "
                                         f"server (other options may be sent with their current values)")
            wanted = body.get("sd_model_checkpoint")
            if wanted is not None:
                if not isinstance(wanted, str):
                    raise PipelineInputError("sd_model_checkpoint must be a string (a title of /sdapi/v1/sd-models)")
                await asyncio.to_thread(switch, self.backend, self.models.find(wanted))
        except PipelineInputError as exc:
            return JSONResponse(a1111_api.error(str(exc), "invalid"), status_code=_status(exc))
        return JSONResponse(None)

    async def _png_info(self, request: Request) -> Response:
        """The web UI's ``PNGInfoResponse``: the infotext, the other text chunks, the infotext's fields."""
        try:
            body = await _body(request, self.backend.config.door)
            image = body.get("image") if isinstance(body, dict) else None
            if not isinstance(image, str) or not image:
                raise PipelineInputError("image is required: a base64-encoded PNG")
            items = await asyncio.to_thread(_text_chunks, image)
        except PipelineInputError as exc:
            return JSONResponse(a1111_api.error(str(exc), "invalid"), status_code=_status(exc))
        info = str(items.pop("parameters", ""))
        return JSONResponse({"info": info, "items": items, "parameters": parse_infotext(info) if info else {}})

    async def _openai_model(self, request: Request) -> Response:
        """``models.retrieve``: one served package, or OpenAI's 404."""
        name = request.path_params["name"]
        if name in self.models.names:
            return JSONResponse(openai_api.model(name))
        message = f"model {name!r:.80} is not served here; this server has {', '.join(self.models.names)}"
        return JSONResponse(openai_api.error(message, "not_found"), status_code=404)

    def _listing(self, answer: Any) -> Any:
        async def listing(request: Request) -> Response:
            return JSONResponse(answer())

        return listing


async def _body(request: Request, door: DoorLimits) -> Any:
    """The JSON body within the door's limits (serve/limits.py), as the API routes read theirs."""
    raw = await read_body(request, door.max_body_bytes, door.read_timeout_s)
    return await asyncio.to_thread(read_json, raw, door)


def _text_chunks(value: str) -> dict[str, Any]:
    """A base64 PNG's text chunks, read through the service's one decoder (serve/images.py: the pixel limit from the
    header; the text after the pixels needs the decode)."""
    from diffship.serve.images import decode_image, image_format

    encoded = "".join((value.split(",", 1)[1] if value.startswith("data:") else value).split())
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if image_format(data) != "PNG":
        raise PipelineInputError("image is not a base64-encoded PNG (its first bytes are not a PNG's)")
    return {key: str(text) for key, text in decode_image(data, "image").info.items() if isinstance(text, str)}


def _status(exc: PipelineInputError) -> int:
    """413 for a body over the door's limit, 408 for one sent too slowly, 422 for the rest (as the API routes)."""
    return 413 if isinstance(exc, BodyTooLarge) else 408 if isinstance(exc, ReadTimeout) else 422
