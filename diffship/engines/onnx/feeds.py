"""What a build's verification feeds are drawn from (docs/design.md, "Parity bars": random inputs at two shapes).

Token ids must lie inside the text encoder's vocabulary, so every check that draws them asks ``vocab_size`` here: one
place for every builder (``build-ort``, the fp16 conversion), whatever text encoders the package's family has.
"""

from __future__ import annotations

from diffship.core.package import ModelPackage


def vocab_size(package: ModelPackage, component: str) -> int:
    """How many token ids ``component``'s random verification inputs may draw from: its own vocabulary for a text
    encoder (recorded at export; ``ModelPackage.vocab_size``), and for a component that reads no ids any encoder's."""
    return package.vocab_size(package.constants.vocabulary_of(component))
