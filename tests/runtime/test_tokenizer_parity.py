"""Our CLIP tokenizer against transformers' CLIPTokenizer (as diffusers loads it) on the real 49,408-token vocab."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from diffship.exporter.vocab import VOCAB_SIZE, write_clip_tokenizer  # noqa: E402
from diffship.runtime.tokenizer import CLIPTokenizer  # noqa: E402
from scripts.make_tokenizer_corpus import generate_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {"sd1": "tiny", "sd2": "tiny-v"}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = json.loads((ROOT / "diffship" / "exporter" / "configs" / FAMILIES[request.param] / "tokenizer_config.json").read_text())
    return write_clip_tokenizer(tmp_path_factory.mktemp(request.param), config)


@pytest.fixture(scope="module")
def pair(tokenizer_dir: Path) -> tuple[CLIPTokenizer, object]:
    return CLIPTokenizer.from_dir(tokenizer_dir), transformers.CLIPTokenizer.from_pretrained(str(tokenizer_dir))


def test_corpus_has_every_category_and_enough_prompts() -> None:
    corpus = generate_corpus()
    assert len(corpus) >= 2000
    assert "" in corpus and any(len(p.split()) > 100 for p in corpus)


def test_tokenizer_matches_transformers_on_corpus(pair) -> None:
    ours, reference = pair
    corpus = generate_corpus()
    expected = reference(corpus, padding="max_length", max_length=77, truncation=True)
    batch = ours.encode(corpus)
    mismatches = [p for p, a, b in zip(corpus, batch.input_ids.tolist(), expected["input_ids"], strict=True) if a != b]
    assert not mismatches, f"{len(mismatches)} prompts differ, first: {mismatches[:3]!r}"
    np.testing.assert_array_equal(batch.attention_mask, np.asarray(expected["attention_mask"]))
    assert batch.input_ids.dtype == np.int64 and batch.input_ids.shape == (len(corpus), 77)


def test_tokenizer_counts_truncated_tokens(pair) -> None:
    ours, reference = pair
    prompts = [", ".join(["a red fox in the snow"] * 20), "short"]
    full = reference(prompts)["input_ids"]
    assert ours.encode(prompts).truncated == (len(full[0]) - 77, 0)


def test_tokenizer_pads_with_configured_token(pair) -> None:
    ours, reference = pair
    assert ours.pad_token == reference.pad_token
    assert ours.encode("a fox").input_ids[0, -1] == reference.pad_token_id


def test_vocabulary_is_the_real_clip_vocabulary(pair) -> None:
    ours, reference = pair
    assert len(ours.encoder) == VOCAB_SIZE == len(reference)
    assert ours.encode("a photo of an astronaut riding a horse").input_ids[0, :9].tolist() == [
        reference.convert_tokens_to_ids(t) for t in ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "an</w>",
                                                     "astronaut</w>", "riding</w>", "a</w>", "horse</w>"]
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=60))
def test_tokenizer_matches_transformers_on_random_unicode(pair, text: str) -> None:
    ours, reference = pair
    assert ours.tokenize(text) == reference(text, add_special_tokens=False)["input_ids"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.text(alphabet=st.characters(codec="ascii"), max_size=12), max_size=40))
def test_tokenizer_matches_transformers_on_ascii_word_salad(pair, words: list[str]) -> None:
    ours, reference = pair
    text = " ".join(words)
    assert ours.encode(text).input_ids[0].tolist() == reference(
        text, padding="max_length", max_length=77, truncation=True
    )["input_ids"]


def test_unicode_tables_match_installed_tokenizers() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_unicode_tables.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_very_long_words_match_transformers(pair) -> None:
    # A 20,000-letter word once took seconds (quadratic BPE); it must still give the reference's ids.
    import random

    ours, reference = pair
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)) for n in (300, 5000)]
    words += ["a" * 4000, "ab" * 2000, "ünïcödé" * 500]
    expected = reference(words, padding="max_length", max_length=77, truncation=True)["input_ids"]
    full = reference(words)["input_ids"]
    batch = ours.encode(words)
    assert batch.input_ids.tolist() == expected
    assert batch.truncated == tuple(max(0, len(ids) - 77) for ids in full)
