"""What a build-ort engine set is specific to, and its name: ``ort-<target>-<precision>``.

``cpu`` sets hold graphs optimised for one CPU family (NCHWc layouts for its vector width), so the target is the
machine and its widest vector extension; ``cuda`` sets hold graphs with attention fused for the CUDA provider, which
optimises the rest itself when the session opens, so any NVIDIA GPU will do.
"""

from __future__ import annotations

import functools
import platform

from diffship.engines.errors import EngineError

TARGETS = ("cpu", "cuda")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_tag() -> str:
    """The CPU family an NCHWc-optimised graph is specific to: machine and widest vector extension."""
    machine = platform.machine().lower()
    flags = cpu_flags()
    for extension in ("avx512f", "avx2", "neon", "asimd"):
        if extension in flags:
            return f"cpu-{machine}-{extension}"
    return f"cpu-{machine}"


def target_tag(target: str) -> str:
    if target not in TARGETS:
        raise EngineError(f"unknown build-ort target {target!r}; choose {' or '.join(TARGETS)}")
    return cpu_tag() if target == "cpu" else "cuda"


def ort_engine_set_name(precision: str, target: str = "cpu") -> str:
    return f"ort-{target_tag(target)}-{precision}"
