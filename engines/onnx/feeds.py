"""What a build's verification feeds are drawn from (docs/design.md, "Parity bars": random inputs at two shapes).

Token ids must lie inside the text encoder's vocabulary, so every check that draws them asks ``vocab_size`` here: one
place for every builder (``build-ort``, the fp16 conversion), whatever tokenizer folders the package has.
"""

from __future__ import annotations

import json

from core.package import ModelPackage
from engines.errors import EngineError

TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")
"""Where a package keeps its tokenizers: SD and SDXL base have ``tokenizer/``; an SDXL refiner only ``tokenizer_2/``."""


def vocab_size(package: ModelPackage, component: str) -> int:
    """How many token ids ``component``'s random verification inputs may draw from. The CLIP tokenizers of the
    families here share one vocabulary size, so the first tokenizer folder the package has answers for every text
    encoder (a value recorded in the manifest is to replace this reading)."""
    for folder in TOKENIZER_FOLDERS:
        path = package.path(f"{folder}/vocab.json")
        if path.is_file():
            try:
                return len(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise EngineError(f"{component}: cannot read {path} for the verification inputs: {exc}") from None
    wanted = " or ".join(f"{folder}/vocab.json" for folder in TOKENIZER_FOLDERS)
    raise EngineError(f"{component}: {package.root} has no tokenizer vocabulary ({wanted}) to draw verification inputs "
                      "from; re-export the package")
