"""diffship's runtime: tokenizer, schedulers and the text-to-image Pipeline, over numpy and compiled engines.

Imports neither torch, diffusers nor transformers. ``from diffship.runtime import Pipeline`` (or ``from diffship import
Pipeline``) loads the pipeline lazily so that ``import diffship.runtime.tokenizer`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffship.runtime.pipeline import Pipeline
    from diffship.runtime.results import GenerationResult

__all__ = ["GenerationResult", "Pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from diffship.runtime import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'diffship.runtime' has no attribute {name!r}")
