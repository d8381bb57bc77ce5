"""Generate the tokenizer parity corpus: prompts that exercise every corner of CLIP tokenisation.

    python scripts/make_tokenizer_corpus.py --out corpus.jsonl [--size 2400] [--seed 0]

The parity test (tests/runtime/test_tokenizer_parity.py) calls ``generate_corpus()`` directly and compares our ids
with transformers' on every prompt; writing the corpus out is for inspection and for the tokens/s benchmark.
Deterministic for a given seed and size.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SUBJECTS = [
    "a red fox", "an astronaut", "a lighthouse", "two cats", "an old man", "a cyberpunk city", "a bowl of ramen",
    "a medieval castle", "the Eiffel Tower", "a robot", "a golden retriever", "mount Fuji", "a vintage car",
    "a portrait of a woman", "a dragon", "a forest cabin", "an owl", "a sailing ship", "New York City", "a teapot",
]
SETTINGS = [
    "in the snow", "riding a horse", "at sunset", "on the moon", "under water", "in a rainy street",
    "on a wooden table", "in the style of Van Gogh", "made of glass", "at night", "in a field of sunflowers",
]
STYLES = [
    "highly detailed", "4k", "8k uhd", "trending on artstation", "octane render", "digital art", "oil painting",
    "35mm photograph", "bokeh", "sharp focus", "studio lighting", "by Greg Rutkowski", "matte painting",
]
PUNCTUATION = [
    "!!!", "?!?", "...", "---", "(((masterpiece)))", "[best quality:1.2]", "{a|b|c}", "***", "~~~", "@@##$$",
    "((", "))", "<>", "\\\\", "//", "::", ";;", "!?", "''", "\"\"", "`", "^_^", ":-)", "<3", "#hashtag", "a_b_c",
]
NUMBERS = [
    "1024x768", "3.14159", "1,000,000", "2nd", "3rd place", "4k", "1999", "0.5", "-42", "+7", "100%", "12:30",
    "+1 (555) 010-9999", "v1.5", "2.1-base", "x2", "007", "1e-5", "½", "²", "Ⅻ", "٣", "५", "〇", "①",
]
CONTRACTIONS = [
    "don't", "it's", "they're", "we've", "I'm", "you'll", "he'd", "O'Neil", "rock 'n' roll", "'quoted'",
    "DON'T STOP", "IT'S", "can’t", "rock’n’roll", "Mike's bike's wheel", "'s", "'t", "'re'", "y'all'd've",
]
ACCENTS = [
    "café", "naïve", "Ångström", "São Paulo", "Zürich", "crème brûlée", "cafe\u0301", "A\u030angstro\u0308m",
    "Œuvre", "façade", "jalapeño", "smörgåsbord", "Dvořák", "Łódź", "İstanbul", "straße", "ǅemal", "Ǆ",
]
SCRIPTS = [
    "你好世界", "東京タワー", "ひらがな", "カタカナ", "한국어 문장", "\u1100\u1161\u11a8", "Привет, мир", "ΣΑΣ ΟΔΟΣ",
    "Ὀδυσσεύς", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Ελληνικά", "ქართული", "Հայերեն",
    "ＡＢＣ ｆｕｌｌｗｉｄｔｈ", "ﬁne ﬂower", "ᵃᵇᶜ", "𝓕𝓪𝓷𝓬𝔂", "𝔊𝔬𝔱𝔥𝔦𝔠", "ⓒⓘⓡⓒⓛⓔ",
]
SYMBOLS = [
    "😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "🔥🔥🔥", "©®™", "→←↑↓", "∑∫√∞", "€£¥₹", "┌─┐", "★☆", "♪♫",
    "°C", "±", "§¶", "†‡", "∅", "🫠", "🧑🏿‍🚀", "\u2764\ufe0f", "\u200d", "\ufe0f",
]
HTML = [
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&#39;", "&quot;hi&quot;", "&nbsp;", "&amp;amp;", "&#x1F600;", "<b>bold</b>",
    "<br/>", "Tom &amp; Jerry", "5 &gt; 3",
]
WHITESPACE = [
    "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u2028", "\u2029", "\u1680", "\u180e", "\u200b", "\u0085",
    "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "  ", "\u202f", "\u205f", "\ufeff",
]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|endoftext", "endoftext|>", "!", "!!", "<|<|endoftext|>|>"]
CONTROLS = ["\x00", "\x01", "\x7f", "\x9f", "\ud7ff", "\ue000", "\U0010ffff", "\ufffd"]
MARKS = [
    # Runs of combining marks, some assigned after the reference's combining-class tables (U+07FD, U+0898, U+08D1,
    # U+1ABF, U+1DF6, ...): transformers keeps those where they are, Python's NFC would reorder them.
    "\u0956\u0f71\u0f72\u08d1", "\u0369\u1df6", "a\u07fd\u0f71", "x\u0898\u0334", "e\u1abf\u0316\u0301",
    "o\u0f71\u08d3\u0323", "\u0915\u094d\u0937", "\u0e01\u0e48\u0e38", "a\u0301\u0323\u0302", "\u0340\u0f71",
    "\u05d0\u05b8\u05bc", "\u1e0d\u0307", "\u0c15\u0c3c\u0c4d", "\u0d15\u0d3b", "\u1715\u1714", "\ua82c\u0316",
]

CATEGORIES: dict[str, list[str]] = {
    "punctuation": PUNCTUATION,
    "numbers": NUMBERS,
    "contractions": CONTRACTIONS,
    "accents": ACCENTS,
    "scripts": SCRIPTS,
    "symbols": SYMBOLS,
    "html": HTML,
    "whitespace": WHITESPACE,
    "specials": SPECIALS,
    "controls": CONTROLS,
    "marks": MARKS,
}


def caption(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(SETTINGS)]
    parts += rng.sample(STYLES, rng.randint(0, 4))
    text = ", ".join(parts)
    return text.capitalize() if rng.random() < 0.3 else text


def long_prompt(rng: random.Random) -> str:
    words = [caption(rng) for _ in range(rng.randint(8, 30))]
    return ", ".join(words)


def mixed(rng: random.Random) -> str:
    """A caption with pieces of other categories spliced in at random places, sometimes without spaces."""
    pieces = caption(rng).split(" ")
    for _ in range(rng.randint(1, 4)):
        category = rng.choice(list(CATEGORIES.values()))
        position = rng.randint(0, len(pieces))
        pieces.insert(position, rng.choice(category))
    joiner = rng.choice([" ", " ", " ", "", "  ", "\t"])
    return joiner.join(pieces)


def generate_corpus(seed: int = 0, size: int = 2400) -> list[str]:
    """Every listed fragment alone, plain captions, mixed prompts, prompts far over 77 tokens, empty strings."""
    rng = random.Random(seed)
    corpus = ["", " ", "\n", "   \t  "]
    for fragments in CATEGORIES.values():
        corpus += fragments
        corpus += [f"{caption(rng)} {fragment}" for fragment in fragments]
        corpus += [f"{fragment}{caption(rng)}{fragment}" for fragment in fragments]
    corpus += [long_prompt(rng) for _ in range(60)]
    while len(corpus) < size:
        roll = rng.random()
        corpus.append(caption(rng) if roll < 0.3 else mixed(rng) if roll < 0.95 else long_prompt(rng))
    return corpus[:size] if len(corpus) > size else corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    corpus = generate_corpus(args.seed, args.size)
    with open(args.out, "w", encoding="utf-8") as handle:
        for prompt in corpus:
            handle.write(json.dumps(prompt, ensure_ascii=False) + "\n")
    print(f"wrote {len(corpus)} prompts to {args.out}")


if __name__ == "__main__":
    main()
