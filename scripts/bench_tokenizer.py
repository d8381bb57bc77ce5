"""Tokens per second of runtime.tokenizer.CLIPTokenizer vs transformers' CLIPTokenizer on the parity corpus.

    python scripts/bench_tokenizer.py [--repeats 5]

A benchmark, not a test: prints a table (cold = empty BPE cache, warm = second pass) and never asserts on speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffship.exporter.vocab import write_clip_tokenizer  # noqa: E402
from diffship.runtime.tokenizer import CLIPTokenizer  # noqa: E402
from scripts.make_tokenizer_corpus import generate_corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import json

    from transformers import CLIPTokenizer as ReferenceTokenizer

    corpus = generate_corpus()
    config = json.loads((ROOT / "diffship" / "exporter" / "configs" / "tiny" / "tokenizer_config.json").read_text())
    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder), config)
        reference = ReferenceTokenizer.from_pretrained(folder)
        tokens = sum(len(ids) for ids in reference(corpus, truncation=False)["input_ids"])

        def ours_cold() -> None:
            CLIPTokenizer.from_dir(folder).encode(corpus)

        ours = CLIPTokenizer.from_dir(folder)
        ours.encode(corpus)
        rows = {
            "diffship (cold cache, incl. load)": ours_cold,
            "diffship (warm cache)": lambda: ours.encode(corpus),
            "transformers, one batch call": lambda: reference(corpus, padding="max_length", max_length=77, truncation=True),
            "transformers, one call per prompt": lambda: [
                reference(p, padding="max_length", max_length=77, truncation=True) for p in corpus
            ],
            "diffship, one call per prompt": lambda: [ours.encode(p) for p in corpus],
        }
        print(f"corpus: {len(corpus)} prompts, {tokens} tokens; median of {args.repeats} runs")
        print(f"{'tokenizer':38s} {'seconds':>9s} {'tokens/s':>12s}")
        for name, run in rows.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            print(f"{name:38s} {median:9.3f} {tokens / median:12,.0f}")


if __name__ == "__main__":
    main()
