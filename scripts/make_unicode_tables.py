"""Generate runtime/data/clip_unicode.json from the reference: the character classes and case map transformers uses.

    python scripts/make_unicode_tables.py [--out runtime/data/clip_unicode.json] [--check]

transformers' CLIP tokenizer normalises and splits text with the Rust ``tokenizers`` library: Oniguruma's ``\\s``,
``\\p{L}`` and ``\\p{N}`` and Rust's per-character ``to_lowercase``. Python's ``regex`` module and ``unicodedata``
follow other Unicode versions (e.g. Python 3.11 knows Unicode 14, ``regex`` 2026 knows 17), so a runtime built on
them disagrees on a few thousand recently assigned characters. This script asks ``tokenizers`` itself which code
points are letters, numbers and whitespace and how each lower-cases, and writes that as ranges and a map, so the
runtime matches the reference whatever Python it runs on. ``--check`` exits non-zero when the committed file
differs from what the installed ``tokenizers`` says (the tests run it).

NFC needs one more table. The reference's canonical combining classes are older than Python 3.11's Unicode 14: it
treats 98 marks assigned since (NKo dantayalan U+07FD, the Arabic marks U+0898-U+08D3, the combining diacritical
marks extended U+1ABF-U+1ACE, ...) as starters, so it never reorders them, where ``unicodedata.normalize`` does. The
table ``combining`` lists every code point the reference itself treats as a non-starter, found by asking its NFC
whether the code point moves past a mark of class 1 or 240; the runtime treats any other mark as a starter.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "diffship" / "runtime" / "data" / "clip_unicode.json"
CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def _matching_code_points(pattern: str) -> list[int]:
    from tokenizers import Regex, pre_tokenizers

    text = "".join(map(chr, CODE_POINTS))
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed", invert=True)
    # Offsets are in characters of ``text``; each match of a single-character pattern is one code point.
    return [CODE_POINTS[start] for _, (start, _end) in split.pre_tokenize_str(text)]


def _ranges(code_points: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for cp in sorted(code_points):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return ranges


def _reference_non_starters() -> list[int]:
    """Code points the reference's NFC reorders as non-starters: each is probed between '-' and U+0334 (class 1), and
    after U+0345 (class 240); a non-starter of any class moves in one of the two."""
    import unicodedata

    from tokenizers import normalizers

    nfc = normalizers.NFC()
    # Only code points that stay themselves under decomposition: a decomposable one is replaced before ordering.
    candidates = [c for c in CODE_POINTS if c and unicodedata.normalize("NFD", chr(c)) == chr(c)]
    moved: set[int] = set()
    for template in ("\x00-{}\u0334", "\x00-\u0345{}"):
        for start in range(0, len(candidates), 20000):
            chunk = candidates[start : start + 20000]
            probes = "".join(template.format(chr(c)) for c in chunk)
            answers = nfc.normalize_str(probes).split("\x00")[1:]
            moved |= {c for c, probe, answer in zip(chunk, probes.split("\x00")[1:], answers, strict=True) if probe != answer}
    return sorted(moved)


def build_tables() -> dict[str, object]:
    from tokenizers import normalizers

    lowercase = normalizers.Lowercase()
    lower_map = {}
    for cp in CODE_POINTS:
        lowered = lowercase.normalize_str(chr(cp))
        if lowered != chr(cp):
            lower_map[str(cp)] = lowered
    return {
        "source": f"tokenizers {metadata.version('tokenizers')} (Oniguruma classes, Rust to_lowercase)",
        "whitespace": _ranges(_matching_code_points(r"\s")),
        "letters": _ranges(_matching_code_points(r"\p{L}")),
        "numbers": _ranges(_matching_code_points(r"\p{N}")),
        "lowercase": lower_map,
        "combining": _ranges(_reference_non_starters()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = parser.parse_args()
    tables = build_tables()
    if args.check:
        committed = json.loads(args.out.read_text(encoding="utf-8"))
        same = {k: v for k, v in committed.items() if k != "source"} == {k: v for k, v in tables.items() if k != "source"}
        print(f"{args.out}: {'matches' if same else 'DIFFERS FROM'} {tables['source']}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tables, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(tables['letters'])} letter ranges, {len(tables['numbers'])} number ranges, "  # type: ignore[arg-type]
          f"{len(tables['lowercase'])} lower-case mappings")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
