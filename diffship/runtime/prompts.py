"""Long prompts and prompt weighting (``long_prompts=True``): the web UI's syntax, chunked encoding, two weightings.

Off by default: diffusers truncates a prompt at the text encoder's window (77 tokens with start and end) and reads no
syntax, and parity with diffusers holds only then.

Syntax (AUTOMATIC1111's web UI, ``modules/prompt_parser.parse_prompt_attention``):

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``((text))`` by 1.21; ``[text]`` divides it by 1.1;
- ``(text:1.3)`` multiplies it by 1.3 (nested brackets multiply); an unclosed bracket runs to the end of the prompt;
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` are literal brackets; ``BREAK`` (upper case, a word of its own) ends the chunk.

Each fragment is tokenized on its own; the tokens are cut into chunks of 75 (the window less start and end), each
encoded as [start, tokens, end, padding] by the text encoder, and the chunks' hidden states concatenated along the
sequence. The UNet's cross-attention reads any number of 77-token windows. Conditional and unconditional embeddings
are padded to the same number of chunks with the empty prompt's embedding (as compel's
``pad_conditioning_tensors_to_same_length`` and the web UI's "pad prompt/negative prompt" option do).

Weightings (``prompt_weighting``):

- ``"webui"`` (the default): the web UI's "Original" emphasis. Hidden states are multiplied by their token's weight,
  then each chunk is rescaled so that its mean is what it was unweighted. Chunks break at the last comma within the
  final 20 tokens of a full chunk (the web UI's ``comma_padding_backtrack`` default). The web UI takes that mean over
  the batch of prompts; here it is taken per prompt (the same when a batch repeats one prompt).
- ``"compel"``: compel's (``Compel(truncate_long_prompts=False, downweight_mode=DownweightMode.REMOVE,
  split_long_text_mode=SplitLongTextMode.BRUTAL)``): a weighted token's state is moved away from the empty prompt's
  state, ``empty + (z - empty) * w``; every fragment weighted below 1 also blends the prompt toward the same prompt
  without that fragment, with blend weight ``tan((1 - w) * pi / 2)``. Chunks break every 75 tokens.

Where both weightings define the same thing, an unweighted long prompt, their embeddings are the same. They differ for
weights other than 1: the web UI scales the state about zero and renormalises; compel scales it about the empty
prompt and removes down-weighted fragments instead of shrinking them. compel writes weights as ``(text)1.3`` and
``text++``; here both weightings read the web UI's syntax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from diffship.core.errors import DiffshipError
from diffship.runtime.tokenizer import CLIPTokenizer

WEIGHTINGS = ("webui", "compel")
ROUND_BRACKET = 1.1
COMMA_BACKTRACK = 20
"""The web UI's ``comma_padding_backtrack`` default: how far back a full chunk may break at a comma."""

_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

Encoder = Callable[[np.ndarray], np.ndarray]
"""Token ids [n, window] -> hidden states [n, window, hidden] (the text encoder)."""


class PromptSyntaxError(DiffshipError, ValueError):
    """A prompt weight that is not a finite number >= 0."""


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float
    """The product of the enclosing brackets' multipliers."""
    breaks: bool = False
    """A ``BREAK``: the chunk ends here (text and weight unused)."""


def parse_prompt(text: str) -> list[Fragment]:
    """The web UI's ``parse_prompt_attention``: fragments with their weights, runs of equal weight merged."""
    parts: list[list[object]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] = float(part[1]) * factor  # type: ignore[arg-type]

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _weight(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_BRACKET)
        elif token == "]" and square_open:
            multiply(square_open.pop(), 1 / ROUND_BRACKET)
        else:
            for index, piece in enumerate(_BREAK.split(token)):
                if index:
                    parts.append(["BREAK", -1.0])
                parts.append([piece, 1.0])
    for start in round_open:
        multiply(start, ROUND_BRACKET)
    for start in square_open:
        multiply(start, 1 / ROUND_BRACKET)
    if not parts:
        parts = [["", 1.0]]
    merged: list[list[object]] = [parts[0]]
    for part in parts[1:]:
        if part[1] == merged[-1][1]:
            merged[-1][0] = str(merged[-1][0]) + str(part[0])
        else:
            merged.append(part)
    return [Fragment("", 1.0, breaks=True) if w == -1.0 and t == "BREAK" else Fragment(str(t), float(w))  # type: ignore[arg-type]
            for t, w in merged]


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PromptSyntaxError(f"prompt weight {text!r} is not a number; write (text:1.3)") from None
    if not math.isfinite(value) or value < 0:
        raise PromptSyntaxError(f"prompt weight {text!r} must be a finite number >= 0")
    return value


@dataclass(frozen=True)
class Chunks:
    """One prompt as text-encoder windows: ids and per-token weights [chunks, window]."""

    ids: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class _Tokens:
    ids: list[int]
    weights: list[float]
    fragment: list[int]
    """Which fragment each token came from (-1 for none), for compel's removal of down-weighted fragments."""
    breaks_after: frozenset[int]
    """Token counts after which a BREAK ends the chunk."""


class PromptEncoder:
    """Encodes prompts of any length with weights; ``encode_batch`` is what the pipeline calls."""

    def __init__(self, tokenizer: CLIPTokenizer, encode: Encoder, weighting: str = "webui") -> None:
        if weighting not in WEIGHTINGS:
            raise PromptSyntaxError(f"prompt_weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r:.40}")
        self.tokenizer, self.encode, self.weighting = tokenizer, encode, weighting
        self.window = tokenizer.max_length
        self.chunk_length = self.window - 2
        self.comma = tokenizer.encoder.get(",</w>")
        self._empty: np.ndarray | None = None

    def chunk_count(self, prompt: str) -> int:
        return len(self.chunks(self._tokens(parse_prompt(prompt))).ids)

    def encode_batch(self, prompts: Sequence[str], chunks: int | None = None) -> np.ndarray:
        """Hidden states [len(prompts), chunks * window, hidden], every prompt padded with the empty prompt's
        embedding to ``chunks`` (default: the most any prompt needs)."""
        encoded = [self.encode_prompt(prompt) for prompt in prompts]
        count = max([len(e) // self.window for e in encoded] + [chunks or 1])
        return np.stack([self._pad(e, count) for e in encoded])

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """One prompt's hidden states [chunks * window, hidden]."""
        fragments = parse_prompt(prompt)
        tokens = self._tokens(fragments)
        if self.weighting == "webui":
            return self._webui(self.chunks(tokens))
        return self._compel(tokens, fragments)

    # ------------------------------------------------------------------ tokens and chunks

    def _tokens(self, fragments: Sequence[Fragment]) -> _Tokens:
        ids: list[int] = []
        weights: list[float] = []
        owner: list[int] = []
        breaks = set()
        for index, fragment in enumerate(fragments):
            if fragment.breaks:
                breaks.add(len(ids))
                continue
            piece = self.tokenizer.tokenize(fragment.text)
            ids += piece
            weights += [fragment.weight] * len(piece)
            owner += [index] * len(piece)
        return _Tokens(ids, weights, owner, frozenset(breaks))

    def chunks(self, tokens: _Tokens) -> Chunks:
        """Chunks of ``chunk_length`` tokens framed by start/end and padded; the web UI's comma backtrack applies
        under ``webui`` weighting, compel's brute split under ``compel``."""
        rows: list[tuple[list[int], list[float]]] = []
        ids: list[int] = []
        weights: list[float] = []
        last_comma = -1

        def close() -> None:
            nonlocal ids, weights, last_comma
            rows.append((ids, weights))
            ids, weights, last_comma = [], [], -1

        for position, (token, weight) in enumerate(zip(tokens.ids, tokens.weights, strict=True)):
            if position in tokens.breaks_after:
                close()
            if token == self.comma and self.weighting == "webui":
                last_comma = len(ids)
            elif (self.weighting == "webui" and len(ids) == self.chunk_length and last_comma != -1
                  and len(ids) - last_comma <= COMMA_BACKTRACK):
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close()
                ids, weights = list(moved[0]), list(moved[1])
            if len(ids) == self.chunk_length:
                close()
            ids.append(token)
            weights.append(weight)
        if len(tokens.ids) in tokens.breaks_after and tokens.ids:
            close()
        if ids or not rows:
            close()
        return self._frame(rows)

    def _frame(self, rows: Sequence[tuple[list[int], list[float]]]) -> Chunks:
        tok = self.tokenizer
        ids = np.full((len(rows), self.window), tok.pad_token_id, dtype=np.int64)
        weights = np.ones((len(rows), self.window), dtype=np.float32)
        for row, (chunk_ids, chunk_weights) in enumerate(rows):
            framed = [tok.bos_token_id, *chunk_ids, tok.eos_token_id]
            ids[row, : len(framed)] = framed
            weights[row, 1 : 1 + len(chunk_weights)] = chunk_weights
        return Chunks(ids, weights)

    # ------------------------------------------------------------------ weightings

    def _hidden(self, chunks: Chunks) -> np.ndarray:
        return self.encode(chunks.ids).astype(np.float32, copy=False)

    def _webui(self, chunks: Chunks) -> np.ndarray:
        hidden = self._hidden(chunks)
        weighted = []
        for z, weights in zip(hidden, chunks.weights, strict=True):
            if np.all(weights == 1.0):
                weighted.append(z)
                continue
            original_mean = z.mean(dtype=np.float32)
            scaled = z * weights[:, np.newaxis]
            weighted.append(scaled * (original_mean / scaled.mean(dtype=np.float32)))
        return np.concatenate(weighted).astype(np.float32, copy=False)

    def _compel_weighted(self, chunks: Chunks) -> np.ndarray:
        hidden, empty = self._hidden(chunks), self.empty()
        out = []
        for z, weights in zip(hidden, chunks.weights, strict=True):
            if np.all(weights == 1.0):
                out.append(z)
                continue
            expanded = weights[:, np.newaxis]
            out.append(np.where(expanded == 1.0, z, empty + (z - empty) * expanded))
        return np.concatenate(out).astype(np.float32, copy=False)

    def _compel(self, tokens: _Tokens, fragments: Sequence[Fragment]) -> np.ndarray:
        base = self._compel_weighted(self.chunks(tokens))
        blends, blend_weights = [base], [1.0]
        for index, fragment in enumerate(fragments):
            if fragment.breaks or fragment.weight >= 1.0:
                continue
            keep = [k for k, owner in enumerate(tokens.fragment) if owner != index]
            without = _Tokens([tokens.ids[k] for k in keep], [tokens.weights[k] for k in keep],
                              [tokens.fragment[k] for k in keep],
                              frozenset(sum(1 for k in keep if k < b) for b in tokens.breaks_after))
            embedding = self._compel_weighted(self.chunks(without))
            blends.append(self._pad(embedding, len(base) // self.window))
            blend_weights.append(math.tan((1.0 - max(1e-5, fragment.weight)) * math.pi / 2))
        if len(blends) == 1:
            return base
        weights = np.asarray(blend_weights, dtype=np.float32)
        weights = weights / weights.sum(dtype=np.float32)
        return np.asarray(np.sum(np.stack(blends) * weights[:, np.newaxis, np.newaxis], axis=0, dtype=np.float32))

    def empty(self) -> np.ndarray:
        """The empty prompt's hidden states [window, hidden]: padding for shorter prompts, compel's origin."""
        if self._empty is None:
            self._empty = self._hidden(self._frame([([], [])]))[0]
        return self._empty

    def _pad(self, hidden: np.ndarray, chunks: int) -> np.ndarray:
        missing = chunks - len(hidden) // self.window
        if missing <= 0:
            return hidden
        return np.concatenate([hidden, *([self.empty()] * missing)])
