"""The real CLIP BPE vocabulary, derived from the committed merge list (see data/clip/NOTICE.md).

OpenAI's ``SimpleTokenizer`` builds its 49,408-entry encoder from ``bpe_simple_vocab_16e6.txt.gz``: the 256 byte
symbols, the same with an end-of-word marker, one entry per merge (the first 48,894 merges), then the two special
tokens. ``vocab.json``/``merges.txt`` in the hub's CLIP tokenizer folders are exactly that table; this module
writes them so tiny models tokenise with the real vocabulary without network access.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from diffship.runtime.tokenizer import bytes_to_unicode

BPE_FILE = Path(__file__).parent / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


@lru_cache(maxsize=1)
def clip_merges() -> tuple[str, ...]:
    """The 48,894 merges CLIP uses, each as ``"first second"``."""
    lines = gzip.open(BPE_FILE).read().decode("utf-8").split("\n")
    return tuple(lines[1 : NUM_MERGES + 1])


@lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in clip_merges()]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"derived CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab


def write_clip_tokenizer(out_dir: Path, tokenizer_config: dict[str, Any]) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(clip_vocab(), ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(clip_merges()) + "\n", encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    special = {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return out_dir
