"""The quality metric of ``shapes``: the committed classifier against the renderer's own labels, the interval against
scipy's, the held-out prompt set against the training sampler, and the grid's rules."""

from __future__ import annotations

import numpy as np
import pytest

from diffship.bench.quality import (
    DEFAULT_MODEL_DIR,
    QualityError,
    QualitySet,
    Scorer,
    grid_cases,
    parse_quality_axis,
    score,
    wilson_interval,
)
from scripts import shapes_data


@pytest.mark.parametrize("correct,total", [(0, 10), (3, 10), (10, 10), (57, 120), (119, 120), (1, 1)])
def test_wilson_interval_matches_scipy(correct: int, total: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(correct, total)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)


BARS = {"shape": 0.95, "colour": 0.95, "position": 0.95}
"""What the committed classifier must reach on newly drawn pictures (classifier.json records what it reached). Shape
is the hard one: a small star and a small cross differ by a few pixels once blurred."""


def test_classifier_reads_newly_drawn_images() -> None:
    """The committed classifier on pictures it never saw, drawn with their true labels: far above chance on every
    scored attribute, and what classifier.json says it reaches (within sampling error of 400 pictures)."""
    quality_set = QualitySet.load(DEFAULT_MODEL_DIR)
    rng = np.random.default_rng(2026)
    scenes = [shapes_data.random_scene(rng) for _ in range(400)]
    images = [shapes_data.render(scene, rng) for scene in scenes]
    predictions = Scorer(quality_set).predict(images)
    recorded = quality_set.classifier_accuracy["fresh_images"]
    for name in shapes_data.SCORED:
        accuracy = np.mean([p[name] == getattr(s, name) for p, s in zip(predictions, scenes, strict=True)])
        assert accuracy >= BARS[name], f"{name}: {accuracy:.1%}"
        assert abs(accuracy - recorded[name]) < 0.06, f"{name}: {accuracy:.1%} here, {recorded[name]:.1%} recorded"


def test_quality_prompts_are_held_out_of_training() -> None:
    quality_set = QualitySet.load(DEFAULT_MODEL_DIR)
    held_out = shapes_data.held_out_triples()
    assert {(p["shape"], p["colour"], p["position"]) for p in quality_set.prompts} == held_out
    rng = np.random.default_rng(0)
    training = {shapes_data.random_scene(rng, exclude=held_out).triple for _ in range(5000)}
    assert not training & held_out
    assert len(training) == 5 * 8 * 5 - len(held_out)  # every other triple is drawn
    assert [p["prompt"] for p in quality_set.prompts[:6:2]] == [
        shapes_data.caption(shapes_data.Scene(*(p[k] for k in shapes_data.ATTRIBUTES)))  # type: ignore[arg-type]
        for p in quality_set.prompts[:6:2]]


def test_score_counts_each_attribute_and_all_three() -> None:
    quality_set = QualitySet.load(DEFAULT_MODEL_DIR, limit=4)
    truth = [{k: p[k] for k in quality_set.scored} for p in quality_set.prompts]
    wrong_colour = {**truth[1], "colour": next(c for c in shapes_data.COLOURS if c != truth[1]["colour"])}
    result = score(quality_set, [truth[0], wrong_colour, truth[2], truth[3]])
    assert result["shape"]["correct"] == 4 and result["colour"]["correct"] == 3 and result["all"]["correct"] == 3
    assert result["all"]["low"] < 0.75 < result["all"]["high"]


def test_quality_grid_is_every_combination_and_rejects_bad_axes() -> None:
    axes = [parse_quality_axis("steps=1,4"), parse_quality_axis("scheduler=euler,ddim")]
    cases = grid_cases(axes, {"steps": 20, "guidance": 4.0, "scheduler": None, "precision": "fp32"})
    assert [(c["steps"], c["scheduler"]) for c in cases] == [(1, "euler"), (1, "ddim"), (4, "euler"), (4, "ddim")]
    assert {c["guidance"] for c in cases} == {4.0}
    for bad, says in [("cfg=1", "KEY one of"), ("steps=a", "must be int"), ("precision=bf16", "fp32, fp16 or int8")]:
        with pytest.raises(QualityError, match=says):
            parse_quality_axis(bad)
    with pytest.raises(QualityError, match="twice"):
        grid_cases([parse_quality_axis("steps=1"), parse_quality_axis("steps=2")], {})


def test_quality_set_missing_files_say_what_to_give(tmp_path) -> None:
    with pytest.raises(QualityError, match="quality_prompts.json.*scripts/train_tiny.py"):
        QualitySet.load(tmp_path)
