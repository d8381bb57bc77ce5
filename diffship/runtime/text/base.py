"""The text side of a model family: prompts in, what the UNet reads besides latents and timestep out.

Each family's description names its text side (``Family.text_side``); ``open_text_side`` finds it in a registry that
holds the built-in ones (``sd``, ``sdxl``, ``sdxl-refiner``) and any added with ``register_text_side``. The pipeline
asks only this protocol: check the family's own call arguments (SDXL's micro-conditioning), then encode a request
(docs/design.md, "Adding a text side").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from diffship.core.errors import PackageError
from diffship.core.package import ModelPackage
from diffship.engines.base import EngineBase
from diffship.runtime.timing import StageTimer
from diffship.runtime.tokenizer import CLIPTokenizer

if TYPE_CHECKING:
    from diffship.runtime.requests import Request

Size = tuple[int, int]
"""A (height, width) size or a (top, left) corner, in pixels."""

Conditioning = dict[str, np.ndarray]
"""What the UNet reads besides the latents and timestep, one row per image: ``encoder_hidden_states`` (and for SDXL
``text_embeds`` and ``time_ids``)."""


class TextOptions(Protocol):
    """A family's own call arguments, checked (hashable: calls with equal options may share a batch)."""

    def describe(self) -> dict[str, Any]:
        """What to record of them in each image's parameters."""
        ...


class TextSide(Protocol):
    """Prompts -> the UNet's conditioning, for one family."""

    def check(self, given: Mapping[str, Any], image_task: bool, long_prompts: bool) -> TextOptions | None:
        """The family's own arguments of a call (``given``: name -> value, None for not given), checked; None when
        the call gives none. A PipelineInputError says what was wrong and what is allowed."""
        ...

    def encode(self, engines: Mapping[str, EngineBase], request: Request, image_task: bool,
               timer: StageTimer) -> tuple[Conditioning, Conditioning | None]:
        """(conditional, unconditional when the request is guided) conditioning, one row per image, prompt-major."""
        ...


TextSideFactory = Callable[[ModelPackage], TextSide]
"""Opens a family's text side for a package (reads its tokenizers and whatever else it needs, checked)."""

_BUILTIN = {"sd": "diffship.runtime.text.sd:SDTextSide.open",
            "sdxl": "diffship.runtime.text.sdxl:XLTextSide.open_base",
            "sdxl-refiner": "diffship.runtime.text.sdxl:XLTextSide.open_refiner"}
_FACTORIES: dict[str, TextSideFactory] = {}


def register_text_side(name: str, factory: TextSideFactory) -> None:
    """Make families whose ``text_side`` is ``name`` read their prompts with ``factory(package)``."""
    _FACTORIES[name] = factory


def open_text_side(package: ModelPackage) -> TextSide:
    """The text side of ``package``'s family, opened on the package."""
    name = package.family.text_side
    if name in _FACTORIES:
        return _FACTORIES[name](package)
    if name not in _BUILTIN:
        raise PackageError(f"the {package.family.name} family reads prompts with text side {name!r}, which this "
                           f"diffship does not have (it has {', '.join([*_BUILTIN, *_FACTORIES])})")
    module_name, _, attribute = _BUILTIN[name].partition(":")
    owner, _, method = attribute.partition(".")
    factory: TextSideFactory = getattr(getattr(importlib.import_module(module_name), owner), method)
    return factory(package)


def read_tokenizer(package: ModelPackage, folder: str) -> CLIPTokenizer:
    """A tokenizer folder of the package, every file checked against the manifest before it is read."""
    listed = sorted(relative for relative in package.manifest.files if relative.startswith(f"{folder}/"))
    for required in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        if f"{folder}/{required}" not in listed:
            raise PackageError(f"{package.root}: the manifest lists no {folder}/{required}; re-export the package")
    for relative in listed:
        package.verify_file(relative)
    return CLIPTokenizer.from_dir(package.path(folder), max_length=package.constants.text_max_length)

