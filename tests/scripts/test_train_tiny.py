"""scripts/train_tiny.py at a few steps: the same seed gives the same bytes, and what it writes is a diffusers folder
StableDiffusionPipeline loads, with the classifier and the quality prompt set beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--vae-steps", "3", "--vae-batch", "4", "--classifier-steps", "2", "--classifier-eval", "64", "--pool", "256", "--unet-steps", "3",
         "--batch", "8", "--epochs", "1", "--sample-steps", "2", "--held-out-prompts", "4"]


def train_twice(first: Path, second: Path) -> tuple[dict, dict]:
    """Two runs at once, one thread each (the thread count is part of what makes a run repeatable)."""
    command = [sys.executable, str(ROOT / "scripts" / "train_tiny.py"), *QUICK, "--threads", "1", "--out"]
    runs = [subprocess.Popen([*command, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for out in (first, second)]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
        assert "diffusion 3/3" in stderr  # progress is shown as it goes
    return tuple(json.loads((out / "training.json").read_text()) for out in (first, second))  # type: ignore[return-value]


@pytest.mark.slow
def test_train_tiny_is_deterministic_and_writes_a_diffusers_folder(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    first, second = train_twice(tmp_path / "a", tmp_path / "b")
    assert first["weights_sha256"] == second["weights_sha256"]
    folder = tmp_path / "a"
    assert not list(tmp_path.glob(".*.partial"))
    for name in ("classifier.onnx", "classifier.json", "quality_prompts.json", "train-log.json", "samples/epoch-01.png"):
        assert (folder / name).is_file(), name
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    image = pipe("a red star", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_train_tiny_refuses_to_overwrite_without_asking(tmp_path: Path) -> None:
    (tmp_path / "exists").mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tiny.py"), "--out", str(tmp_path / "exists")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--overwrite" in done.stderr


def test_train_tiny_objectness_target_is_the_shapes_coverage_whatever_the_colours() -> None:
    """Channel 3's target: -A on cells of background, +A on cells inside the shape, for any pair of colours."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from scripts import shapes_data as data
    from scripts.train_tiny import OBJECTNESS_AMPLITUDE, objectness_target

    for colour, background in (("red", "blue"), ("white", "black"), ("black", "yellow")):
        scene = data.Scene("square", colour, "large", "top left", background)
        image = data.render(scene, np.random.default_rng(0)).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
        target = objectness_target(torch.from_numpy(image[None]))[0, 0].numpy()
        assert target.shape == (16, 16)
        assert target.min() == -OBJECTNESS_AMPLITUDE and target.max() == OBJECTNESS_AMPLITUDE
        # Centred at (0.31, 0.31) of the side: cell (5, 5) of 16 is inside the square, the far corner is not.
        assert target[5, 5] == OBJECTNESS_AMPLITUDE and target[15, 15] == -OBJECTNESS_AMPLITUDE


def test_train_tiny_pyramid_noise_has_unit_variance_and_correlated_neighbours() -> None:
    pytest.importorskip("torch")
    import numpy as np

    from scripts.train_tiny import pyramid_noise

    plain = pyramid_noise(np.random.default_rng(0), (64, 4, 16, 16), discount=0.0).numpy()
    pyramid = pyramid_noise(np.random.default_rng(0), (64, 4, 16, 16), discount=0.4).numpy()
    for noise in (plain, pyramid):
        assert abs(noise.std() - 1) < 0.02 and abs(noise.mean()) < 0.02

    def neighbour_correlation(noise: np.ndarray) -> float:
        return float(np.corrcoef(noise[..., :-1].ravel(), noise[..., 1:].ravel())[0, 1])

    assert abs(neighbour_correlation(plain)) < 0.02
    assert neighbour_correlation(pyramid) > 0.04  # plain noise: 0 +- 0.004 over these 61,440 pairs


def test_train_tiny_shape_cell_weights_cover_the_shape_and_its_outline_only() -> None:
    """The diffusion loss's weight map, read off a latent whose objectness channel is the exact target: the shape's
    cells and their neighbours get the weight, cells two or more away from the shape get 1."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from scripts import shapes_data as data
    from scripts.train_tiny import OBJECTNESS_AMPLITUDE, OBJECTNESS_CHANNEL, objectness_target, shape_cell_weights

    scene = data.Scene("star", "green", "small", "bottom right", "blue")
    image = data.render(scene, np.random.default_rng(0)).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    target = objectness_target(torch.from_numpy(image[None]))
    latents = torch.zeros(1, 4, 16, 16)
    latents[:, OBJECTNESS_CHANNEL:OBJECTNESS_CHANNEL + 1] = target
    weights = shape_cell_weights(latents, 5.0)[0, 0].numpy()
    assert set(np.unique(weights)) == {1.0, 5.0}
    covered = (target[0, 0].numpy() / OBJECTNESS_AMPLITUDE + 1) / 2 > 0.1  # more than a tenth of the cell is shape
    assert (weights[covered] == 5.0).all()
    distance_two = np.ones((16, 16), bool)
    for y, x in zip(*np.nonzero(covered), strict=True):
        distance_two[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = False
    assert (weights[distance_two] == 1.0).all()
    assert weights[0, 0] == 1.0 and weights[12, 12] == 5.0  # top-left corner; centre of "bottom right" (0.69 x 16)
    assert (shape_cell_weights(latents, 1.0) == 1.0).all()
