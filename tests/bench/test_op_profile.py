"""``bench.op_profile``: ONNX Runtime's own per-node profile of the engine the runtime opens, by kind of work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffship.bench.op_profile import component_feeds, kind_of, node_seconds, profile_calls, summarise
from diffship.core.package import ModelPackage


def test_profile_calls_times_every_node_of_the_runtimes_unet_within_the_call(tiny_package: Path) -> None:
    package = ModelPackage.open(tiny_package)
    feeds = component_feeds(package, "unet", 8, np.random.default_rng(0))
    profile = profile_calls(package, "unet", 1, feeds, repeats=2)
    assert len(profile["call_s"]) == 2
    ops = profile["ops"]
    assert ops["Conv"]["nodes"] > 0 and ops["Conv"]["median_s"] > 0
    # One thread runs one node at a time, so the nodes' times fit inside the call's wall time.
    assert 0 < sum(op["median_s"] for op in ops.values()) <= max(profile["call_s"])
    rows = summarise(profile, {"convolution": 1e9}, peak_gflops=100.0)
    assert sum(row["seconds"] for row in rows) == pytest.approx(profile["call_median_s"])
    convolution = next(row for row in rows if row["kind"] == "convolution")
    assert convolution["floor_s"] == pytest.approx(0.01) and "Conv" in convolution["ops"]


def test_node_seconds_refuses_a_profile_whose_calls_it_cannot_tell_apart() -> None:
    one_call = [{"name": "model_run", "cat": "Session", "ts": 0, "dur": 10}]
    with pytest.raises(RuntimeError, match="expected 3 model_run events"):
        node_seconds(one_call, repeats=2)


def test_node_seconds_leaves_out_the_warm_up_and_takes_the_median_per_op_type() -> None:
    def node(op: str, ts: int, dur: int) -> dict[str, object]:
        return {"name": f"n_{op}_kernel_time", "cat": "Node", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"name": "model_run", "cat": "Session", "ts": 1000 * k, "dur": 900} for k in range(4)]
    events += [node("Conv", 10, 800_000)]  # the warm-up, left out
    events += [node("Conv", 1000 * k + 10, 1000 * k) for k in (1, 2, 3)]
    events += [node("Conv", 2100, 5), node("MatMul", 3100, 7)]
    timed = node_seconds(events, repeats=3)
    assert timed["Conv"] == {"median_s": pytest.approx(2005e-6), "nodes": 1}
    assert timed["MatMul"]["median_s"] == 0.0  # present in one call of three
    assert kind_of("MatMul") == "matrix product" and kind_of("Sigmoid") == "elementwise"
