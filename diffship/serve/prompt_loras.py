"""``<lora:NAME:WEIGHT>`` tags in the service's requests (``serve --lora-dir``): the API formats take them out of the
prompt (``tagged``) and the LoRAs travel with the call to ``LoraRunner``, which sits between the batcher and the
pipeline and runs each group of calls with its LoRAs (``Pipeline.set_loras``, on top of the server's own ``--lora``).
Calls naming different LoRAs never share a loop: a batch splits by LoRA set. Without ``--lora-dir`` (or under Ray) a
tag is refused with one line (422)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from diffship.runtime.calls import Call
from diffship.runtime.errors import PipelineError
from diffship.runtime.lora import LoraRequest
from diffship.runtime.pipeline import GenerationResult, Pipeline
from diffship.runtime.previews import StepReporter
from diffship.runtime.prompt_tags import lora_tags
from diffship.runtime.requests import StepCallback

LORA_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("diffship_lora_dir", default=None)
"""The LoRA folder of the server answering the request being parsed (None: tags are refused)."""


@dataclass(frozen=True)
class WithLoras:
    """A call's step callback that also carries the LoRAs its prompt's tags named (the call's one free slot that
    reaches the batch runner unchanged)."""

    loras: tuple[LoraRequest, ...]
    inner: StepCallback | None = None

    def __call__(self, step: int, timestep: float, latents: Any) -> None:
        if self.inner is not None:
            self.inner(step, timestep, latents)


def tagged(arguments: dict[str, Any]) -> dict[str, Any]:
    """``Pipeline.prepare`` arguments with the prompt's tags taken out and their LoRAs attached (see the module)."""
    prompt = arguments.get("prompt")
    negative = arguments.get("negative_prompt")
    if not isinstance(prompt, str):
        return arguments
    found = lora_tags([prompt], LORA_DIR.get(), [negative] if isinstance(negative, str) else [])
    if not found.loras:
        return arguments
    return {**arguments, "prompt": found.prompts[0], "callback": WithLoras(found.loras, arguments.get("callback"))}


def loras_of(call: Call) -> tuple[LoraRequest, ...]:
    callback = call.callback
    if isinstance(callback, StepReporter):  # a call that asked for progress (a web-UI job's previews) wraps its own
        callback = callback.callback
    return callback.loras if isinstance(callback, WithLoras) else ()


class LoraRunner:
    """The batcher's runner: the pipeline, with each call's tagged LoRAs set before it runs."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.base = pipeline.loras
        """The server's own LoRAs (``serve --lora``), under every call's."""

    def run_batch(self, calls: list[Call]) -> list[GenerationResult | PipelineError]:
        groups: dict[tuple[LoraRequest, ...], list[int]] = {}
        for index, call in enumerate(calls):
            groups.setdefault(loras_of(call), []).append(index)
        outcomes: list[GenerationResult | PipelineError | None] = [None] * len(calls)
        for loras, indexes in groups.items():
            wanted = (*self.base, *loras)
            try:
                if self.pipeline.loras != wanted:
                    self.pipeline.set_loras(wanted)
            except PipelineError as exc:  # a file that will not apply: these calls fail, the others run
                for index in indexes:
                    outcomes[index] = exc
                continue
            for index, outcome in zip(indexes, self.pipeline.run_batch([calls[i] for i in indexes]), strict=True):
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]


def install(backend: Any) -> None:
    """Put a ``LoraRunner`` between ``backend``'s batcher and its pipeline (once it has started)."""
    batcher = getattr(backend, "batcher", None)
    if batcher is not None and isinstance(batcher.runner, Pipeline):
        batcher.runner = LoraRunner(batcher.runner)


class LoraContext:
    """ASGI middleware: each request is parsed knowing the server's LoRA folder, over a runner that applies it."""

    def __init__(self, app: ASGIApp, backend: Any, lora_dir: Path | None) -> None:
        self.app, self.backend, self.lora_dir = app, backend, lora_dir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.lora_dir is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        install(self.backend)
        token = LORA_DIR.set(self.lora_dir)
        try:
            await self.app(scope, receive, send)
        finally:
            LORA_DIR.reset(token)
