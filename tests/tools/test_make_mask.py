"""``python -m diffship.tools.make_mask``: the mask the README's inpainting recipe uses, and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def make_mask(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diffship.tools.make_mask", *arguments], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_make_mask_writes_a_binary_disc_and_refuses_to_replace_it(tmp_path: Path) -> None:
    out = tmp_path / "masks" / "disc.png"
    done = make_mask(str(out), "--size", "64x48", "--disc", "0.5,0.5,0.25")
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(out))
    assert mask.shape == (48, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[24, 32] == 255 and mask[0, 0] == 0  # white (repaint) at the centre, black at the corner
    again = make_mask(str(out), "--size", "64x48")
    assert again.returncode == 2 and "exists; pass --overwrite" in again.stderr
    assert make_mask(str(out), "--size", "64x48", "--overwrite").returncode == 0


def test_make_mask_bad_arguments_say_what_is_allowed(tmp_path: Path) -> None:
    for arguments, says in [(["--disc", "0.5,0.5"], "give 3 float values"), (["--size", "64"], "give 2 int values"),
                            (["--rect", "0,0,a,1"], "give 4 float values")]:
        done = make_mask(str(tmp_path / "m.png"), *arguments)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    lossy = make_mask(str(tmp_path / "m.jpg"))
    assert lossy.returncode == 2 and "a mask is a .png" in lossy.stderr
