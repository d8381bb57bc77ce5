"""scripts/probe_prompt_words.py on the committed shapes model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.probe_prompt_words import PROMPT, probe

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "models" / "shapes"


@pytest.mark.slow
def test_probe_prompt_words_sees_the_colour_word_and_nothing_for_an_identity_swap() -> None:
    effects = {e.attribute: e for e in probe(SHAPES, swaps={"colour": ("red", "blue"), "same": ("red", "red")},
                                             timesteps=(999, 600))}
    # The committed model draws the prompt's colour (BENCHMARKS.md, "Quality vs speed"): the word moves its output.
    assert min(effects["colour"].relative_change.values()) > 0.01, effects["colour"]
    assert set(effects["same"].relative_change.values()) == {0.0}


@pytest.mark.slow
def test_probe_prompt_words_cli_prints_a_table_and_refuses_a_swap_not_in_the_prompt() -> None:
    script = [sys.executable, str(ROOT / "scripts" / "probe_prompt_words.py"), "--model", str(SHAPES)]
    done = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert PROMPT in done.stdout and "position: top left -> bottom right" in done.stdout
    refused = subprocess.run([*script, "--prompt", "a cat"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "'red' is not in the prompt" in refused.stderr
    assert "Traceback" not in refused.stderr
