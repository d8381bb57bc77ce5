"""The web UI's prompt syntax and the chunking of long prompts (runtime/prompts.py).

The parse expectations are the examples AUTOMATIC1111's web UI documents for its ``parse_prompt_attention``
(modules/prompt_parser.py, its doctest), which is the definition this parser follows. Embeddings are checked against
compel in tests/parity/test_long_prompt_parity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffship.runtime.prompts import Fragment, PromptEncoder, PromptSyntaxError, parse_prompt
from diffship.runtime.tokenizer import CLIPTokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "diffship" / "exporter" / "configs"


def pairs(text: str) -> list[tuple[str, float]]:
    return [(f.text, round(f.weight, 6)) if not f.breaks else ("BREAK", -1.0) for f in parse_prompt(text)]


@pytest.mark.parametrize("text,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("[[faded]]", [("faded", round(1 / 1.21, 6))]),
])
def test_parse_prompt_follows_the_web_ui_examples(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


def test_parse_prompt_refuses_a_weight_that_is_not_finite() -> None:
    # "(a:1e999)" is no weight to the web UI's pattern either; the pattern only lets digits, dots and a sign through.
    with pytest.raises(PromptSyntaxError, match="not a number"):
        parse_prompt("(a:1.2.3)")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    from diffship.exporter.vocab import write_clip_tokenizer

    config = json.loads((CONFIGS / "tiny" / "tokenizer_config.json").read_text())
    return CLIPTokenizer.from_dir(write_clip_tokenizer(tmp_path_factory.mktemp("clip"), config))


def recording_encoder(calls: list[np.ndarray]):
    def encode(ids: np.ndarray) -> np.ndarray:
        calls.append(ids.copy())
        # A stand-in text encoder: each position's state depends on its token and position.
        return (np.sin(ids[..., None] * 0.001 + np.arange(4)) + np.arange(ids.shape[1])[None, :, None] * 0.01
                ).astype(np.float32)
    return encode


def test_chunks_are_75_tokens_framed_by_start_and_end(tokenizer: CLIPTokenizer) -> None:
    encoder = PromptEncoder(tokenizer, recording_encoder([]), "compel")
    words = " ".join(["fox"] * 160)
    tokens = encoder._tokens(parse_prompt(words))
    chunks = encoder.chunks(tokens)
    assert chunks.ids.shape == (3, 77)
    for row, count in zip(chunks.ids, (75, 75, 10), strict=True):
        assert row[0] == tokenizer.bos_token_id and row[count + 1] == tokenizer.eos_token_id
        assert (row[count + 2:] == tokenizer.pad_token_id).all()
    assert encoder.chunk_count("a " * 75) == 1 and encoder.chunk_count("a " * 76) == 2


def test_web_ui_chunks_break_at_a_late_comma_and_at_break(tokenizer: CLIPTokenizer) -> None:
    encoder = PromptEncoder(tokenizer, recording_encoder([]), "webui")
    prompt = " ".join(["fox"] * 70) + ", " + " ".join(["cat"] * 10)
    chunks = encoder.chunks(encoder._tokens(parse_prompt(prompt)))
    # The comma is token 71: the first chunk ends after it and "cat" x 10 moves to the second.
    assert chunks.ids.shape == (2, 77) and list(chunks.ids[0][70:73]) == [
        tokenizer.encoder["fox</w>"], tokenizer.encoder[",</w>"], tokenizer.eos_token_id]
    compel = PromptEncoder(tokenizer, recording_encoder([]), "compel")
    assert compel.chunks(compel._tokens(parse_prompt(prompt))).ids[0][75] == tokenizer.encoder["cat</w>"]
    broken = encoder.chunks(encoder._tokens(parse_prompt("a fox BREAK a cat")))
    assert broken.ids.shape == (2, 77) and broken.ids[1][1] == tokenizer.encoder["a</w>"]


def test_web_ui_weighting_keeps_each_chunk_mean(tokenizer: CLIPTokenizer) -> None:
    encoder = PromptEncoder(tokenizer, recording_encoder([]), "webui")
    plain = encoder.encode_prompt("a red fox in the snow")
    weighted = encoder.encode_prompt("a (red:1.5) fox in the snow")
    assert weighted.shape == plain.shape == (77, 4)
    assert weighted.mean() == pytest.approx(plain.mean(), rel=1e-5)
    ratio = weighted / plain
    red = 2  # [start, a, red, ...]
    assert ratio[red].mean() == pytest.approx(1.5 * ratio[1].mean(), rel=1e-4)


def test_batches_are_padded_with_the_empty_prompt(tokenizer: CLIPTokenizer) -> None:
    encoder = PromptEncoder(tokenizer, recording_encoder([]), "webui")
    batch = encoder.encode_batch(["fox " * 100, "cat"])
    assert batch.shape == (2, 154, 4)
    np.testing.assert_array_equal(batch[1, 77:], encoder.empty())
    np.testing.assert_array_equal(batch[1, :77], encoder.encode_prompt("cat"))


def test_unknown_weighting_is_refused(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(PromptSyntaxError, match="webui, compel"):
        PromptEncoder(tokenizer, recording_encoder([]), "a1111")
    assert Fragment("x", 1.0).breaks is False
