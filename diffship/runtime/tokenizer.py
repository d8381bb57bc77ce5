"""CLIP's byte-level BPE tokenizer over numpy, giving the ids diffusers gets from transformers' ``CLIPTokenizer``.

Matches transformers 5.x ``CLIPTokenizer`` (the Rust ``tokenizers`` backend) as diffusers' Stable Diffusion pipelines
call it (``padding="max_length", truncation=True``). Where that differs from OpenAI's original ``SimpleTokenizer``,
transformers wins, because its ids are what diffusers users get:

- Text is NFC-normalised, every run of whitespace (``\\s`` as Oniguruma defines it: tab to carriage return, NEL,
  space separators, line and paragraph separators) becomes one space, and each character is lower-cased on its own
  (so a final capital sigma becomes ``σ``, not ``ς``). There is no ftfy repair and no HTML unescaping: ``&amp;``
  stays four characters, as in transformers 5. ``do_lower_case: false`` is ignored, as transformers 5 ignores it.
- Special tokens (bos, eos, pad, unk and any added tokens the config names) are matched case-sensitively in the raw
  text before normalisation, leftmost-longest, and map straight to their ids. SD 2.x pads with ``!``, which makes
  every ``!`` in a prompt that special token (id 0) rather than BPE text, exactly as transformers does.
- The remaining text is split with CLIP's pattern (contractions, letter runs, single digits, runs of other
  non-space characters), each piece is mapped byte-by-byte to unicode and merged by BPE rank.

Character classes (whitespace, letters, numbers), the lower-case map and the set of combining marks are the
reference's own, generated from ``tokenizers`` into ``data/clip_unicode.json`` by ``scripts/make_unicode_tables.py``;
Python's ``regex`` module and ``unicodedata`` follow other Unicode versions and disagree on ~17,000 recently assigned
characters. NFC is ``unicodedata``'s, except that a mark the reference does not know as one (98 marks assigned since
its tables, e.g. U+07FD, U+0898) is kept as a starter, so runs of marks are put in the reference's order, not
Python's. Known limit: a composition pair introduced after this Python's Unicode version (e.g. Unicode 16's
Tulu-Tigalari vowel signs on Python 3.11) stays decomposed here while transformers composes it.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

from diffship.core.errors import DiffshipError

log = logging.getLogger(__name__)

_TABLES_PATH = Path(__file__).parent / "data" / "clip_unicode.json"
_CONFIG_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


# The same pattern for pure-ASCII text, where every Unicode version agrees; large explicit classes make the
# general pattern several times slower, and most prompts are ASCII.
_ASCII_WHITESPACE_RUN = regex.compile(r"[\t\n\v\f\r ]+")
_ASCII_PIECE = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[A-Za-z]+|[0-9]|[^\t\n\v\f\r A-Za-z0-9]+")


@dataclass(frozen=True)
class _TextRules:
    whitespace_run: regex.Pattern[str]
    piece: regex.Pattern[str]
    lowercase: dict[int, str]
    combining: frozenset[int]
    """Code points the reference's NFC treats as combining marks (non-starters)."""

    def nfc(self, text: str) -> str:
        """NFC as the reference computes it: marks it does not know as marks split the text into runs that are
        normalised on their own (a starter is never reordered, and blocks composition across it)."""
        # Decomposed character by character: marks are judged after decomposition, as NFC judges them, but NFD of the
        # whole text would already reorder them by this Python's classes.
        decomposed = "".join(ch if ord(ch) < 0xC0 else unicodedata.normalize("NFD", ch) for ch in text)
        barriers = [i for i, ch in enumerate(decomposed)
                    if ord(ch) > 0x2FF and unicodedata.combining(ch) and ord(ch) not in self.combining]
        if not barriers:
            return unicodedata.normalize("NFC", text)
        pieces, start = [], 0
        for index in barriers:
            pieces += [unicodedata.normalize("NFC", decomposed[start:index]), decomposed[index]]
            start = index + 1
        return "".join(pieces) + unicodedata.normalize("NFC", decomposed[start:])


def _character_class(ranges: list[list[int]]) -> str:
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)


@lru_cache(maxsize=1)
def _text_rules() -> _TextRules:
    """CLIP's patterns over the reference's own character classes (see scripts/make_unicode_tables.py)."""
    tables = json.loads(_TABLES_PATH.read_text(encoding="utf-8"))
    space = _character_class(tables["whitespace"])
    letter = _character_class(tables["letters"])
    number = _character_class(tables["numbers"])
    return _TextRules(
        whitespace_run=regex.compile(f"[{space}]+"),
        piece=regex.compile(f"'s|'t|'re|'ve|'m|'ll|'d|[{letter}]+|[{number}]|[^{space}{letter}{number}]+"),
        lowercase={int(cp): lowered for cp, lowered in tables["lowercase"].items()},
        combining=frozenset(cp for lo, hi in tables["combining"] for cp in range(lo, hi + 1)),
    )


class TokenizerError(DiffshipError, ValueError):
    """The tokenizer folder is incomplete or inconsistent, or the input is not text."""


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of GPT-2 and CLIP."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values, code_points = printable[:], printable[:]
    extra = 0
    for byte in range(256):
        if byte not in byte_values:
            byte_values.append(byte)
            code_points.append(256 + extra)
            extra += 1
    return dict(zip(byte_values, (chr(c) for c in code_points), strict=True))


@dataclass(frozen=True)
class TokenizedBatch:
    input_ids: np.ndarray
    """[batch, max_length] int64: start token, tokens, end token, then padding."""
    attention_mask: np.ndarray
    """[batch, max_length] int64: 1 over start/tokens/end, 0 over padding."""
    truncated: tuple[int, ...]
    """How many tokens of each text did not fit into the window and were dropped."""


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid UTF-8 JSON ({exc})") from None


def _config_token(value: object) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class CLIPTokenizer:
    """Byte-level BPE with CLIP's normalisation and pre-tokenisation (see the module docstring)."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
        unk_token: str = "<|endoftext|>",
        special_tokens: Iterable[str] = (),
        max_length: int = 77,
    ) -> None:
        self.encoder = vocab
        self.decoder = {index: token for token, index in vocab.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        if max_length < 2:
            raise TokenizerError(f"max_length must leave room for the start and end tokens, got {max_length}")
        self.max_length = max_length
        specials = {bos_token, eos_token, pad_token, unk_token, *special_tokens}
        missing = sorted(t for t in specials if t not in vocab)
        if missing:
            raise TokenizerError(f"special tokens {missing} are not in the vocabulary")
        self.bos_token_id = vocab[bos_token]
        self.eos_token_id = vocab[eos_token]
        self.pad_token_id = vocab[pad_token]
        self.unk_token_id = vocab[unk_token]
        self.pad_token = pad_token
        # Longest first, so that Python's leftmost-first alternation behaves as transformers' leftmost-longest.
        ordered = sorted(specials, key=lambda t: (-len(t), t))
        self._specials = regex.compile("|".join(regex.escape(t) for t in ordered))
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], max_length: int | None = None) -> CLIPTokenizer:
        """Load ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` as a diffusers tokenizer folder holds them."""
        folder = Path(path)
        files = {name: folder / name for name in ("vocab.json", "merges.txt", "tokenizer_config.json")}
        for name, file in files.items():
            if not file.is_file():
                raise TokenizerError(f"tokenizer folder {folder} has no {name}")
        vocab = _read_json(files["vocab.json"])
        if not isinstance(vocab, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in vocab.items()):
            raise TokenizerError(f"{files['vocab.json']} must map tokens to ids >= 0")
        try:
            merge_lines = files["merges.txt"].read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{files['merges.txt']} is not UTF-8 text ({exc.reason})") from None
        merges = []
        for line in merge_lines:
            if not line or line.startswith("#version"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise TokenizerError(f"{files['merges.txt']}: malformed merge line {line!r}")
            merges.append((parts[0], parts[1]))
        config = _read_json(files["tokenizer_config.json"])
        if not isinstance(config, dict):
            raise TokenizerError(f"{files['tokenizer_config.json']} must be a JSON object")
        tokens = {key: _config_token(config.get(key)) for key in _CONFIG_TOKENS}
        bos = tokens["bos_token"] or "<|startoftext|>"
        eos = tokens["eos_token"] or "<|endoftext|>"
        pad = tokens["pad_token"] or eos
        decoder, extra = config.get("added_tokens_decoder", {}), config.get("additional_special_tokens", [])
        if not isinstance(decoder, dict) or not isinstance(extra, list):
            raise TokenizerError(f"{files['tokenizer_config.json']}: added_tokens_decoder must be an object and "
                                 "additional_special_tokens a list")
        added = [t for t in (_config_token(v) for v in decoder.values()) if t]
        added += [t for t in (_config_token(v) for v in extra) if t]
        unk = tokens["unk_token"] or "<|endoftext|>"
        if config.get("do_lower_case") is False:
            log.warning("%s sets do_lower_case false; CLIP lower-cases anyway (as transformers 5 does)", folder)
        length = max_length if max_length is not None else config.get("model_max_length")
        if not isinstance(length, int) or isinstance(length, bool) or length > 100_000:
            raise TokenizerError(f"{files['tokenizer_config.json']} gives no usable model_max_length ({length!r})")
        return cls(vocab, merges, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, special_tokens=added, max_length=length)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens, truncation or padding."""
        if not isinstance(text, str):
            raise TokenizerError(f"prompts must be str, got {type(text).__name__}")
        ids: list[int] = []
        position = 0
        for match in self._specials.finditer(text):
            ids += self._tokenize_plain(text[position : match.start()])
            ids.append(self.encoder[match.group()])
            position = match.end()
        ids += self._tokenize_plain(text[position:])
        return ids

    def encode(self, texts: str | Sequence[str]) -> TokenizedBatch:
        """Start token, tokens, end token, padding to ``max_length``; texts too long are cut (see ``truncated``)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        width = self.max_length
        input_ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        truncated = []
        for row, text in enumerate(batch):
            tokens = self.tokenize(text)
            kept = tokens[: width - 2]
            truncated.append(len(tokens) - len(kept))
            sequence = [self.bos_token_id, *kept, self.eos_token_id]
            input_ids[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
        return TokenizedBatch(input_ids, attention_mask, tuple(truncated))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special tokens dropped, word ends as spaces); for messages, not for round trips."""
        byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        specials = {self.bos_token_id, self.eos_token_id, self.pad_token_id}
        text = "".join(self.decoder[i] for i in ids if i not in specials)
        raw = bytearray(byte_decoder[c] for c in text.replace("</w>", " ") if c in byte_decoder)
        return raw.decode("utf-8", errors="replace").replace("\x00", "").strip()

    def _tokenize_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if text.isascii():
            pieces = _ASCII_PIECE.findall(_ASCII_WHITESPACE_RUN.sub(" ", text).lower())
        else:
            rules = _text_rules()
            normalized = rules.whitespace_run.sub(" ", rules.nfc(text))
            # Character by character from the reference's table, as the Rust normaliser does: no context-dependent
            # final sigma, and the same answer for characters newer than this Python's unicodedata.
            pieces = rules.piece.findall(normalized.translate(rules.lowercase))
        ids: list[int] = []
        for piece in pieces:
            cached = self._cache.get(piece)
            if cached is None:
                cached = self._bpe(piece)
                if len(self._cache) < 100_000:
                    self._cache[piece] = cached
            ids += cached
        return ids

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Byte-level BPE of one piece: repeatedly merge the adjacent pair of lowest rank, leftmost first.

        The lowest-ranked pair is taken from a heap over a linked list of symbols, so a piece of n bytes costs
        O(n log n) rather than O(n^2) (a 20,000-letter word took seconds). It merges exactly what the textbook loop
        does: a merge only creates pairs that rank after it (a token is always merged from tokens ranked before it),
        so all occurrences of one pair are merged, left to right, before any other.
        """
        symbols: list[str] = [self.byte_encoder[b] for b in piece.encode("utf-8")]
        symbols[-1] += "</w>"
        ranks = self.bpe_ranks
        following = list(range(1, len(symbols) + 1))
        preceding = list(range(-1, len(symbols) - 1))
        heap = [(rank, i) for i in range(len(symbols) - 1) if (rank := ranks.get((symbols[i], symbols[i + 1]))) is not None]
        heapq.heapify(heap)
        alive = [True] * len(symbols)
        while heap:
            rank, left = heapq.heappop(heap)
            right = following[left]
            if not alive[left] or right >= len(symbols) or ranks.get((symbols[left], symbols[right])) != rank:
                continue  # stale: one of the two was merged into something else since
            symbols[left] += symbols[right]
            alive[right] = False
            following[left] = following[right]
            if following[left] < len(symbols):
                preceding[following[left]] = left
            for first in (preceding[left], left):
                if first >= 0 and following[first] < len(symbols):
                    merged_rank = ranks.get((symbols[first], symbols[following[first]]))
                    if merged_rank is not None:
                        heapq.heappush(heap, (merged_rank, first))
        symbols = [symbol for symbol, keep in zip(symbols, alive, strict=True) if keep]
        return tuple(self.encoder.get(symbol, self.unk_token_id) for symbol in symbols)
