"""Text sides: each family's prompts -> UNet conditioning, behind one protocol (``runtime.text.base``)."""

from diffship.runtime.text.base import (
    Conditioning,
    Size,
    TextOptions,
    TextSide,
    TextSideFactory,
    open_text_side,
    read_tokenizer,
    register_text_side,
)

__all__ = ["Conditioning", "Size", "TextOptions", "TextSide", "TextSideFactory", "open_text_side", "read_tokenizer",
           "register_text_side"]
