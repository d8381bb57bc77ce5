"""scripts/probe_shape_by_noise.py on the committed shapes model."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.probe_shape_by_noise import main, probe

SHAPES = Path(__file__).resolve().parents[2] / "diffship" / "models" / "shapes"


@pytest.mark.slow
def test_probe_shape_by_noise_keeps_the_shape_through_the_vae_and_denoises_from_the_asked_start() -> None:
    pytest.importorskip("diffusers")
    results = probe(SHAPES, starts=(0, 999), images=16, steps=4)
    assert [(r.start_timestep, r.steps) for r in results] == [(0, 0), (751, 4)]
    # The classifier reads 99% of VAE round trips right (diffship/models/shapes/classifier.json); chance is 20%.
    assert results[0].shape_accuracy >= 0.8, results


def test_probe_shape_by_noise_refuses_a_folder_without_a_classifier(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--model", str(tmp_path)])
    assert refused.value.code == 2 and "has no classifier.onnx" in capsys.readouterr().err
