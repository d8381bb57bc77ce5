"""Batched denoising (Pipeline.run_batch, runtime.batching.Batcher) on the tiny package: every call gets exactly the
images it gets alone; the batcher gathers compatible calls, keeps incompatible ones apart, bounds its queue, honours
deadlines and cancellation, and drains on close. Also cancellation and bounded memory of Pipeline itself."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffship.runtime import Pipeline
from diffship.runtime.batching import Batcher, BatcherClosed, BatchReport, BatchSettings, DeadlineExceeded, QueueFull
from diffship.runtime.calls import FINISH_EARLY, Call
from diffship.runtime.errors import PipelineCancelled, PipelineInputError
from diffship.runtime.images import to_uint8
from diffship.runtime.timing import peak_rss_bytes

CALLS: list[dict[str, Any]] = [
    {"prompt": "a red fox", "seed": 1, "guidance_scale": 7.5},
    {"prompt": ["a cat", "a dog"], "negative_prompt": "blurry", "seed": 5, "guidance_scale": 3.0,
     "num_images_per_prompt": 2},
    {"prompt": "a house by the sea", "seed": 9, "guidance_scale": 12.0},
]


@pytest.fixture(scope="module")
def pipe(tiny_package: Path) -> Pipeline:
    return Pipeline.from_package(tiny_package, device="cpu", threads=1)


def assert_same_images(alone: Any, batched: Any) -> None:
    assert batched.seeds == alone.seeds
    assert batched.parameters == alone.parameters
    for a, b in zip(alone.images, batched.images, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scheduler", [None, "euler_a", "dpmpp_2m", "ddim"])
def test_run_batch_gives_each_call_exactly_its_images_alone(pipe: Pipeline, scheduler: str | None) -> None:
    # euler_a draws fresh noise every step: each image must keep drawing from its own generator in the batch.
    alone = [pipe(**kwargs, num_inference_steps=5, scheduler=scheduler) for kwargs in CALLS]
    batched = pipe.run_batch([pipe.prepare(**kwargs, num_inference_steps=5, scheduler=scheduler) for kwargs in CALLS])
    for one, together in zip(alone, batched, strict=True):
        assert_same_images(one, together)


def test_run_batch_refuses_calls_that_cannot_share_a_loop(pipe: Pipeline) -> None:
    calls = [pipe.prepare("a", num_inference_steps=3), pipe.prepare("b", num_inference_steps=4)]
    with pytest.raises(PipelineInputError, match="one batch_key"):
        pipe.run_batch(calls)
    unguided = pipe.prepare("c", num_inference_steps=3, guidance_scale=1.0)
    assert unguided.batch_key() != calls[0].batch_key()


def test_cancel_stops_a_call_between_steps(pipe: Pipeline) -> None:
    seen: list[int] = []
    with pytest.raises(PipelineCancelled, match="before step 3 of 6"):
        pipe("a red fox", num_inference_steps=6, scheduler="ddim", callback=lambda step, t, latents: seen.append(step),
             cancel=lambda: len(seen) >= 2)
    assert seen == [0, 1]
    with pytest.raises(PipelineInputError, match="cancel must be callable"):
        pipe("a red fox", cancel=True)  # type: ignore[arg-type]


def test_a_cancelled_call_leaves_its_batch_companions_unchanged(pipe: Pipeline) -> None:
    alone = [pipe(**kwargs, num_inference_steps=5) for kwargs in CALLS]
    steps: list[int] = []
    calls = [pipe.prepare(**CALLS[0], num_inference_steps=5, callback=lambda s, t, x: steps.append(s),
                          cancel=lambda: len(steps) >= 2),
             *[pipe.prepare(**kwargs, num_inference_steps=5) for kwargs in CALLS[1:]]]
    outcomes = pipe.run_batch(calls)
    assert isinstance(outcomes[0], PipelineCancelled)
    for one, together in zip(alone[1:], outcomes[1:], strict=True):
        assert_same_images(one, together)


def test_finish_early_decodes_a_calls_images_at_the_step_reached_and_leaves_its_companions(pipe: Pipeline) -> None:
    alone = [pipe(**kwargs, num_inference_steps=5) for kwargs in CALLS[1:]]
    seen: list[np.ndarray] = []
    calls = [pipe.prepare(**CALLS[0], num_inference_steps=5, callback=lambda s, t, x: seen.append(x.copy()),
                          cancel=lambda: FINISH_EARLY if len(seen) >= 2 else False),
             *[pipe.prepare(**kwargs, num_inference_steps=5) for kwargs in CALLS[1:]]]
    batcher = Batcher(pipe, BatchSettings(max_batch=8, max_wait_s=2.0))  # the batcher passes FINISH_EARLY on
    try:
        tickets = [batcher.submit(call) for call in calls]
        results = [ticket.result(timeout=120) for ticket in tickets]
    finally:
        batcher.close()
    assert len(seen) == 2  # no step after the one it finished at
    np.testing.assert_array_equal(results[0].images[0], to_uint8(pipe._decode(seen[-1]))[0])
    for one, together in zip(alone, results[1:], strict=True):
        assert_same_images(one, together)
    with pytest.raises(PipelineCancelled, match="cancelled before step 1 of"):  # no step taken: nothing to decode
        pipe(**CALLS[0], num_inference_steps=5, cancel=lambda: FINISH_EARLY)


def test_batcher_gathers_concurrent_compatible_calls_into_one_batch(pipe: Pipeline) -> None:
    reports: list[BatchReport] = []
    batcher = Batcher(pipe, BatchSettings(max_batch=8, max_wait_s=2.0), on_batch=reports.append)
    try:
        tickets = [batcher.submit(pipe.prepare(**kwargs, num_inference_steps=4)) for kwargs in CALLS]
        results = [ticket.result(timeout=120) for ticket in tickets]
    finally:
        batcher.close()
    assert [(r.calls, r.images) for r in reports] == [(3, 6)]
    for kwargs, result in zip(CALLS, results, strict=True):
        assert_same_images(pipe(**kwargs, num_inference_steps=4), result)


def test_batcher_keeps_incompatible_calls_apart_and_caps_batch_size(pipe: Pipeline) -> None:
    reports: list[BatchReport] = []
    batcher = Batcher(pipe, BatchSettings(max_batch=2, max_wait_s=1.0), on_batch=reports.append)
    try:
        tickets = [batcher.submit(pipe.prepare("a", num_inference_steps=3, seed=s)) for s in range(3)]
        tickets.append(batcher.submit(pipe.prepare("b", num_inference_steps=2, seed=7)))
        for ticket in tickets:
            ticket.result(timeout=120)
    finally:
        batcher.close()
    assert sorted((r.calls, r.images) for r in reports) == [(1, 1), (1, 1), (2, 2)]
    assert all(r.images <= 2 for r in reports)


def test_batcher_queue_full_refuses_with_a_retry_after(pipe: Pipeline) -> None:
    release = threading.Event()
    batcher = Batcher(pipe, BatchSettings(max_batch=1, max_wait_s=0, max_queue=2))
    try:
        blocker = batcher.submit(pipe.prepare("a", num_inference_steps=2, callback=lambda *a: release.wait(60)))
        _wait_until(lambda: batcher.queue_depth == 0 and batcher.running_images == 1)
        queued = [batcher.submit(pipe.prepare("b", num_inference_steps=2, seed=s)) for s in range(2)]
        with pytest.raises(QueueFull, match="queue is full") as refused:
            batcher.submit(pipe.prepare("c", num_inference_steps=2))
        assert refused.value.retry_after_s >= 1
        release.set()
        for ticket in [blocker, *queued]:
            ticket.result(timeout=120)
    finally:
        release.set()
        batcher.close()


def test_batcher_deadlines_end_queued_and_running_calls(pipe: Pipeline) -> None:
    release = threading.Event()
    batcher = Batcher(pipe, BatchSettings(max_batch=1, max_wait_s=0))
    try:
        running = batcher.submit(pipe.prepare("a", num_inference_steps=4, callback=lambda *a: release.wait(1.0)),
                                 timeout_s=0.5)
        queued = batcher.submit(pipe.prepare("b", num_inference_steps=2), timeout_s=0.2)
        time.sleep(0.3)
        queued.check_deadline()  # what a service's wait loop does: it answers at the deadline, not when the worker is free
        with pytest.raises(DeadlineExceeded):
            queued.result(timeout=0)
        with pytest.raises(DeadlineExceeded):
            running.result(timeout=60)
        _wait_until(lambda: batcher.queue_depth == 0)
    finally:
        release.set()
        batcher.close()


def test_ticket_cancel_drops_a_queued_call_and_stops_a_running_one(pipe: Pipeline) -> None:
    started = threading.Event()
    release = threading.Event()

    def hold(*_: Any) -> None:
        started.set()
        release.wait(60)

    batcher = Batcher(pipe, BatchSettings(max_batch=1, max_wait_s=0))
    try:
        running = batcher.submit(pipe.prepare("a", num_inference_steps=5, callback=hold))
        queued = batcher.submit(pipe.prepare("b", num_inference_steps=2))
        assert started.wait(60)
        queued.cancel()
        running.cancel()
        release.set()
        for ticket in (running, queued):
            with pytest.raises(PipelineCancelled, match="cancelled by the caller"):
                ticket.result(timeout=60)
        after = batcher.submit(pipe.prepare("c", num_inference_steps=2))
        assert after.result(timeout=60).images
    finally:
        release.set()
        batcher.close()


def test_batcher_close_drains_accepted_calls_then_refuses(pipe: Pipeline) -> None:
    batcher = Batcher(pipe, BatchSettings(max_batch=1, max_wait_s=0))
    tickets = [batcher.submit(pipe.prepare("a", num_inference_steps=2, seed=s)) for s in range(3)]
    batcher.close(drain=True)
    assert all(ticket.future.done() and ticket.result().images for ticket in tickets)
    with pytest.raises(BatcherClosed):
        batcher.submit(pipe.prepare("a", num_inference_steps=2))


def test_a_failing_metrics_callback_does_not_stop_the_worker(pipe: Pipeline) -> None:
    def broken(report: BatchReport) -> None:
        raise RuntimeError("metrics backend down")

    batcher = Batcher(pipe, BatchSettings(max_batch=1), on_batch=broken)
    try:
        for seed in range(2):  # the second call runs only if the worker survived the first batch's callback
            assert batcher.submit(pipe.prepare("a", num_inference_steps=2, seed=seed)).result(timeout=60).images
    finally:
        batcher.close()


def test_result_answers_at_the_deadline_while_the_worker_is_busy(pipe: Pipeline) -> None:
    release = threading.Event()
    batcher = Batcher(pipe, BatchSettings(max_batch=1))
    try:
        batcher.submit(pipe.prepare("a", num_inference_steps=2, callback=lambda *a: release.wait(30)))
        queued = batcher.submit(pipe.prepare("b", num_inference_steps=2), timeout_s=0.2)
        with pytest.raises(DeadlineExceeded):
            queued.result(timeout=20)
        assert not release.is_set()  # answered while the first call still held the worker
    finally:
        release.set()
        batcher.close()


@pytest.mark.slow
def test_memory_stays_bounded_over_hundreds_of_calls_from_threads(pipe: Pipeline) -> None:
    def burst(count: int) -> None:
        threads = [threading.Thread(target=lambda k=k: pipe(f"prompt {k}", num_inference_steps=1, seed=k))
                   for k in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for _ in range(5):  # warm up: every session's arenas reach their working size
        burst(8)
    before = _rss_bytes()
    for _ in range(30):
        burst(8)  # 240 calls
    grown = _rss_bytes() - before
    assert grown < 64 * 2**20, f"resident memory grew {grown / 2**20:.0f} MiB over 240 calls"
    assert peak_rss_bytes() > 0


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_until(condition: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_call_is_what_prepare_returns(pipe: Pipeline) -> None:
    call = pipe.prepare("a red fox", num_inference_steps=3, seed=4, num_images_per_prompt=2)
    assert isinstance(call, Call) and call.images == 2 and call.request.seeds == [4, 5]
