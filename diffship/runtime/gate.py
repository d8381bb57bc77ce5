"""Calls share the engines; a LoRA swap replaces some of them: the swap waits for calls in flight, and new calls wait
for the swap, so that no call runs on a mix of old and new weights or on a closed session."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class EngineGate:
    """Many calls at once, or one swap alone."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._calls = 0
        self._swapping = False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._swapping)
            self._calls += 1
        try:
            yield
        finally:
            with self._condition:
                self._calls -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._swapping)
            self._swapping = True  # from here new calls wait, so the calls in flight drain
            self._condition.wait_for(lambda: self._calls == 0)
        try:
            yield
        finally:
            with self._condition:
                self._swapping = False
                self._condition.notify_all()


def holds_engines(method: F) -> F:
    """Run ``method`` inside its object's ``_gate.call()``."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._gate.call():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
