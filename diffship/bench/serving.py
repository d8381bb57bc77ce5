"""Throughput and latency of the HTTP service against concurrency (``cli.py bench-serve``).

Setups: ``batching off`` (``max_batch`` 1: calls run one by one), ``batching on`` (``max_batch`` N), and with Ray,
``ray x2`` (two replicas splitting the cores, batching on). The in-process setups share one opened pipeline and run
alternately, never at once. Each round visits every (concurrency, setup) pair in rotated order, so the setups see the
same host load; a level is a closed loop of ``concurrency`` clients sending ``requests_per_client`` requests each
(OpenAI API, fixed steps and size, distinct seeds). Quoted: images/s and latency p50/p95 (median over rounds).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline
    from diffship.serve.service import ServeConfig

PROMPT = "a red fox in the snow, detailed fur, golden hour"


def measure_serving(
    package: Path, concurrency: Sequence[int], max_batch: int, steps: int, size: int, rounds: int,
    requests_per_client: int, threads: int | None, ray_replicas: int = 0, max_wait_s: float = 0.0,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    from diffship.bench.processes import absolute
    from diffship.runtime import Pipeline
    from diffship.runtime.batching import BatchSettings
    from diffship.serve.service import ServeConfig

    package = Path(absolute(package))  # Ray's replicas run in another working directory
    config = ServeConfig(package=package, threads=threads, device="cpu", warmup=True, timeout_s=3600,
                         batch=BatchSettings(max_batch=max_batch, max_wait_s=max_wait_s, max_queue=4 * max(concurrency)))
    setups = {"batching off": replace(config, batch=replace(config.batch, max_batch=1)), "batching on": config}
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(Pipeline.from_package(package, backend="ort", device="cpu", threads=threads))
        urls = {name: stack.enter_context(_in_process(pipe, setup)) for name, setup in setups.items()}
        if ray_replicas:
            urls[f"ray x{ray_replicas}"] = stack.enter_context(_on_ray(replace(config, threads=None), ray_replicas))
        for round_index in range(rounds):
            for level_index, clients in enumerate(concurrency):
                names = list(urls)
                shift = (round_index + level_index) % len(names)
                for name in names[shift:] + names[:shift]:
                    sample = _closed_loop(urls[name], clients, requests_per_client, steps, size)
                    samples.setdefault((name, clients), []).append(sample)
                    progress(f"round {round_index + 1}/{rounds}: {name}, {clients} clients: "
                             f"{sample['images_per_s']:.2f} images/s, p50 {sample['p50_s']:.2f}s")
    rows: list[dict[str, Any]] = []
    for (name, clients), runs in samples.items():
        rows.append({"setup": name, "concurrency": clients,
                     **{key: statistics.median(run[key] for run in runs)
                        for key in ("images_per_s", "p50_s", "p95_s", "mean_batch")},
                     "runs": runs})
    order = list(urls)
    rows.sort(key=lambda row: (row["concurrency"], order.index(row["setup"])))
    return {"steps": steps, "size": size, "rounds": rounds, "max_batch": max_batch, "max_wait_s": max_wait_s,
            "requests_per_client": requests_per_client, "threads": threads, "prompt": PROMPT, "rows": rows}


@contextlib.contextmanager
def _in_process(pipe: Pipeline, config: ServeConfig) -> Iterator[str]:
    from diffship.serve.app import create_app
    from diffship.serve.local import serve_in_thread
    from diffship.serve.service import ImageService

    with serve_in_thread(create_app(ImageService(config, pipeline=pipe))) as url:
        yield url


@contextlib.contextmanager
def _on_ray(config: ServeConfig, replicas: int) -> Iterator[str]:
    from ray import serve

    from diffship.serve.ray_app import application, ray_serve

    with ray_serve() as url:
        serve.run(application(config, replicas), name="diffship", route_prefix="/")
        yield url


def _closed_loop(url: str, clients: int, per_client: int, steps: int, size: int) -> dict[str, float]:
    """``clients`` threads, each sending its next request when the last is answered."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=3600) as http:
            for k in range(per_client):
                body = {"prompt": PROMPT, "size": f"{size}x{size}", "steps": steps, "seed": index * 1000 + k}
                sent = time.perf_counter()
                response = http.post(f"{url}/v1/images/generations", json=body)
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                    latencies.append(time.perf_counter() - sent)

    images_before, batches_before = _batch_totals(url)
    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed during the benchmark, e.g. {errors[0]}")
    images_after, batches_after = _batch_totals(url)
    ordered = sorted(latencies)
    return {"images_per_s": len(latencies) / wall, "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], "wall_s": wall,
            "mean_batch": (images_after - images_before) / max(1.0, batches_after - batches_before)}


def _batch_totals(url: str) -> tuple[float, float]:
    """(images, batches) the service has run so far, from its metrics ((0, 0) from the Ray gateway, which has none)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"diffship_batch_images_sum": 0.0, "diffship_batch_images_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] = sample.value
    return totals["diffship_batch_images_sum"], totals["diffship_batch_images_count"]


def format_serving_table(result: dict[str, Any]) -> str:
    from diffship.runtime.tables import format_table

    off = {row["concurrency"]: row["images_per_s"] for row in result["rows"] if row["setup"] == "batching off"}
    header = ["setup", "clients", "images/s", "vs batching off", "p50 s", "p95 s", "images / batch"]
    rows = [[r["setup"], r["concurrency"], f"{r['images_per_s']:.2f}",
             f"{r['images_per_s'] / off[r['concurrency']]:.2f}x" if off.get(r["concurrency"]) else "-",
             f"{r['p50_s']:.2f}", f"{r['p95_s']:.2f}", f"{r['mean_batch']:.1f}" if r["mean_batch"] else "-"]
            for r in result["rows"]]
    return format_table(header, rows)


def plot_serving(result: dict[str, Any], path: Path) -> Path:
    from diffship.bench.plots import pyplot

    plt = pyplot()
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for setup in dict.fromkeys(row["setup"] for row in result["rows"]):
        rows = [row for row in result["rows"] if row["setup"] == setup]
        levels = [row["concurrency"] for row in rows]
        throughput.plot(levels, [row["images_per_s"] for row in rows], marker="o", label=setup)
        latency.plot(levels, [row["p95_s"] for row in rows], marker="o", label=setup)
    for axis, label in ((throughput, "images / s"), (latency, "p95 latency (s)")):
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{result['size']}x{result['size']}, {result['steps']} steps, max batch {result['max_batch']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
