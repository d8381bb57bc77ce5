"""scripts/probe_prompt_words.py on the committed shapes model."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.probe_prompt_words import PROMPT, main, probe

SHAPES = Path(__file__).resolve().parents[2] / "diffship" / "models" / "shapes"


@pytest.mark.slow
def test_probe_prompt_words_sees_the_colour_word_and_nothing_for_an_identity_swap() -> None:
    effects = {e.attribute: e for e in probe(SHAPES, swaps={"colour": ("red", "blue"), "same": ("red", "red")},
                                             timesteps=(999, 600))}
    # The committed model draws the prompt's colour (BENCHMARKS.md, "Quality vs speed"): the word moves its output.
    assert min(effects["colour"].relative_change.values()) > 0.01, effects["colour"]
    assert set(effects["same"].relative_change.values()) == {0.0}


@pytest.mark.slow
def test_probe_prompt_words_main_prints_a_table_and_refuses_a_swap_not_in_the_prompt(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(SHAPES)]) == 0
    printed = capsys.readouterr().out
    assert PROMPT in printed and "position: top left -> bottom right" in printed
    with pytest.raises(SystemExit) as refused:
        main(["--model", str(SHAPES), "--prompt", "a cat"])
    assert refused.value.code == 2 and "'red' is not in the prompt" in capsys.readouterr().err
