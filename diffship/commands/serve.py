"""``serve``: a package over HTTP (serve.app on uvicorn, or serve.ray_app on Ray Serve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import click

from diffship.commands.help import Command
from diffship.commands.options import (
    backend_option,
    device_option,
    lora_option,
    precision_option,
    threads_option,
)

if TYPE_CHECKING:
    from diffship.serve.models import ModelSet
    from diffship.serve.security import SecurityPolicy
    from diffship.serve.service import ServeConfig


@click.command(cls=Command, short_help="Serve a package over HTTP (OpenAI and web UI APIs).")
@click.option("--package", "packages", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Model package folder (from export); repeat it to serve several, one at a time: the first is "
                   "served at start, web UI clients switch with POST /sdapi/v1/options {\"sd_model_checkpoint\": "
                   "NAME} (NAME: the folder's name). Example: --package packages/sd15 --package packages/dreamshaper")
@click.option("--lora-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder of LoRA files (.safetensors) that <lora:NAME:WEIGHT> tags in a prompt name (NAME: the "
                   "file's name without .safetensors, relative to the folder); listed at GET /sdapi/v1/loras. "
                   "Without it a prompt with such a tag is refused. Example: --lora-dir loras/")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@backend_option()
@precision_option()
@device_option("auto", "ONNX Runtime device (cuda needs onnxruntime-gpu).")
@threads_option()
@lora_option("Serve with this LoRA (at SCALE, default 1.0); repeatable.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(1),
              help="Most images in one batched denoising loop (1: no batching).")
@click.option("--max-wait-ms", default=0.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="How long a request waits for companions when the engines are free (0: batches form from the "
                   "requests that queue while a batch runs).")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(1),
              help="Requests waiting beyond the running batch; more get 429 with Retry-After.")
@click.option("--timeout", "timeout_s", default=300.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a request may take, queued and running; after it: 504.")
@click.option("--no-warmup", is_flag=True, help="Report ready without the warm-up generation.")
@click.option("--max-body-mb", default=32.0, show_default=True, type=click.FloatRange(0.001),
              help="Largest request body in MiB; more gets 413 (e.g. --max-body-mb 8 without image-to-image).")
@click.option("--read-timeout", "read_timeout_s", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds a client has to send its headers, and again its body; after it the connection is "
                   "closed, or 408 (e.g. --read-timeout 10).")
@click.option("--memory-budget", default="auto", show_default=True, callback=lambda ctx, param, value: _memory_budget(value),
              help="GiB a batch may grow the server by, checked against a memory model measured at start (a one-step "
                   "call at 192, 256 and 320 pixels square); larger batches run in pieces, a size whose one image "
                   "does not fit gets 413 naming the largest that does. auto: 80%% of the memory available once the "
                   "engines are loaded; off: no check (e.g. --memory-budget 6).")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File of API keys, one per line, that clients send as 'Authorization: Bearer KEY' (the OpenAI "
                   "client's api_key); also $DIFFSHIP_API_KEYS, comma-separated. Every route but /healthz then needs "
                   "one (e.g. --api-key-file /etc/diffship/keys).")
@click.option("--api-auth", multiple=True, metavar="USER:PASS",
              help="HTTP basic auth credentials, as the web UI's --api-auth; repeatable (e.g. --api-auth me:secret).")
@click.option("--cors-origin", multiple=True, metavar="ORIGIN",
              help="An origin whose web pages may call the API; repeatable; * for any. Default none: cross-origin "
                   "requests are refused (e.g. --cors-origin https://app.example).")
@click.option("--allowed-host", multiple=True, metavar="NAME",
              help="A Host header name answered (DNS rebinding); repeatable; * for any. Default: the loopback names "
                   "when --host is loopback, else any (e.g. --allowed-host images.example).")
@click.option("--public-metrics", is_flag=True, help="Serve /metrics without credentials (a scraper inside the "
              "network).")
@click.option("--ray", "use_ray", is_flag=True, help="Run as a Ray Serve deployment (see --replicas, README 'Serving').")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1), help="Ray Serve replicas.")
@click.option("--ray-address", help="Ray cluster to join (default: start a local one).")
def serve(packages: tuple[Path, ...], lora_dir: Path | None, host: str, port: int, backend: str,
          precision: str | None, device: str, threads: int | None, loras: tuple[str, ...], max_batch: int,
          max_wait_ms: float, max_queue: int, timeout_s: float, no_warmup: bool, use_ray: bool, replicas: int,
          ray_address: str | None, max_body_mb: float = 32.0, read_timeout_s: float = 30.0,
          memory_budget: int | Literal["auto"] | None = "auto", api_key_file: Path | None = None,
          api_auth: tuple[str, ...] = (), cors_origin: tuple[str, ...] = (), allowed_host: tuple[str, ...] = (),
          public_metrics: bool = False) -> None:
    """Serve a package over HTTP: OpenAI's Images API and AUTOMATIC1111's txt2img API, with request batching.

    \b
    Examples:
      {prog} serve --package packages/tiny --port 8000 --max-batch 4 --max-queue 64
      curl -s localhost:8000/v1/images/generations -d '{"prompt": "a red fox", "size": "64x64"}'
      curl -s localhost:8000/sdapi/v1/txt2img -d '{"prompt": "a red fox", "steps": 20, "cfg_scale": 7}'
      {prog} serve --package packages/tiny --ray --replicas 2
      {prog} serve --package packages/sd15 --package packages/dreamshaper --lora-dir loras/

    \b
    Endpoints: POST /v1/images/generations and /v1/images/edits, GET /v1/models (OpenAI); POST /sdapi/v1/txt2img
    and /sdapi/v1/img2img, GET /sdapi/v1/progress, POST /sdapi/v1/interrupt, GET and POST /sdapi/v1/options, GET
    /sdapi/v1/sd-models, /loras, /samplers, ... (the web UI's API; README "Serving" lists what is honoured); GET
    /healthz, GET /readyz (engines loaded and warmed up), GET /metrics (Prometheus). Prompts may carry the web UI's
    <lora:NAME:WEIGHT> tags with --lora-dir. SIGTERM (or Ctrl-C) stops taking connections and finishes the requests
    accepted before exiting.
    """
    from diffship.core.package import ModelPackage
    from diffship.runtime.batching import BatchSettings
    from diffship.serve.limits import DoorLimits
    from diffship.serve.models import ModelSet
    from diffship.serve.service import ServeConfig

    for package in packages:
        ModelPackage.open(package)  # a wrong path is one clear line here, not a stack trace from the server's startup
    models = ModelSet(tuple(package.resolve() for package in packages))  # Ray replicas may run elsewhere
    if lora_dir is not None and not lora_dir.is_dir():
        raise click.BadParameter(f"{lora_dir} is not a folder", param_hint="--lora-dir")
    config = ServeConfig(package=models.packages[0], backend=backend, precision=precision, threads=threads, device=device,
                         loras=loras, batch=BatchSettings(max_batch, max_wait_ms / 1000, max_queue),
                         timeout_s=timeout_s, warmup=not no_warmup,
                         door=DoorLimits(max_body_bytes=int(max_body_mb * 2**20), read_timeout_s=read_timeout_s),
                         memory_budget=memory_budget,
                         security=_security(host, api_key_file, api_auth, cors_origin, allowed_host, public_metrics))
    if use_ray and (len(packages) > 1 or lora_dir is not None):
        raise click.BadParameter("serving several packages, or LoRAs from --lora-dir, needs the single-process "
                                 "server (leave out --ray)", param_hint="--package/--lora-dir")
    if use_ray:
        from diffship.serve.ray_app import run_on_ray

        run_on_ray(config, replicas, host, port, ray_address, lambda line: click.echo(line, err=True))
        return
    _run_uvicorn(config, host, port, models, lora_dir)


def _security(host: str, key_file: Path | None, basic: tuple[str, ...], origins: tuple[str, ...],
              hosts: tuple[str, ...], public_metrics: bool) -> SecurityPolicy:
    from diffship.serve.security import LOOPBACK_HOSTS, SecurityPolicy, load_keys, parse_basic

    loopback = host in LOOPBACK_HOSTS or host.startswith("127.")
    policy = SecurityPolicy(load_keys(key_file), parse_basic(basic), tuple(origins),
                            tuple(name.lower() for name in hosts) or (LOOPBACK_HOSTS if loopback else None),
                            public_metrics)
    if not loopback and not policy.authenticates:
        click.echo(f"warning: listening on {host} without credentials: anyone who can reach this port can generate; "
                   "set --api-key-file (or $DIFFSHIP_API_KEYS) or --api-auth", err=True)
    return policy


def _memory_budget(value: str) -> int | Literal["auto"] | None:
    if value in ("auto", "off"):
        return None if value == "off" else "auto"
    try:
        gib = float(value)
    except ValueError:
        gib = -1.0
    if not gib > 0 or gib == float("inf"):
        raise click.BadParameter(f"give GiB > 0, auto or off, got {value!r:.40}", param_hint="--memory-budget")
    return int(gib * 2**30)


def _run_uvicorn(config: ServeConfig, host: str, port: int, models: ModelSet, lora_dir: Path | None) -> None:
    """The app on uvicorn; a start-up failure (engines that will not load) stops the server, as SIGTERM does."""
    import signal

    import uvicorn

    from diffship.serve.app import create_app
    from diffship.serve.protocol import header_timeout_protocol
    from diffship.serve.service import ImageService
    from diffship.serve.webui_routes import WebUi

    def stop_on_failure(error: BaseException) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down; the error is in the log above

    click.echo(f"serving {config.package} on http://{host}:{port} (max batch {config.batch.max_batch}, queue "
               f"{config.batch.max_queue}); /readyz says when the engines are loaded", err=True)
    service = ImageService(config)
    web_ui = WebUi(service, models, lora_dir.resolve() if lora_dir is not None else None)
    uvicorn.run(create_app(service, on_start_failure=stop_on_failure, web_ui=web_ui), host=host, port=port,
                log_level="warning", timeout_graceful_shutdown=int(config.timeout_s) + 5,
                http=header_timeout_protocol(config.door.read_timeout_s))
