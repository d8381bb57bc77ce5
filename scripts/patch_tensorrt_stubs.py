"""Make the ``tensorrt-stubs`` package readable by mypy, so the full-TensorRT code path is type-checked in CI.

    python scripts/patch_tensorrt_stubs.py [--out .venv/tensorrt-stubs]

tensorrt-stubs 10.13 installs ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi`` straight into
site-packages (no ``py.typed``, so mypy ignores them) and has a few syntax errors: parameters named ``in``, a
parameter without a default after ones with defaults, and an import of ``tensorrt_libs``, which does not exist here.
This copies them to ``--out`` (pyproject's ``mypy_path``) with those fixed; nothing else changes.
"""

from __future__ import annotations

import argparse
import re
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".venv" / "tensorrt-stubs"


def _fix_defaults(line: str) -> str:
    """In a ``def`` line, give ``= ...`` to parameters without a default that follow ones with a default."""
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not match:
        return line
    params, depth, current = [], 0, ""
    for char in match.group(2):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            params.append(current)
            current = ""
        else:
            current += char
    params.append(current)
    seen_default, fixed = False, []
    for param in params:
        stripped = param.strip()
        if "=" in stripped:
            seen_default = True
        elif seen_default and stripped and not stripped.startswith("*") and stripped != "/":
            param = param + " = ..."
        fixed.append(param)
    return match.group(1) + ",".join(fixed) + match.group(3)


def patch(text: str) -> str:
    text = re.sub(r"^import tensorrt_libs as tensorrt_libs\n", "", text, flags=re.M)
    text = text.replace("'tensorrt_libs', ", "")
    text = re.sub(r"\bin: ", "in_: ", text)
    return "\n".join(_fix_defaults(line) for line in text.split("\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    site = Path(sysconfig.get_paths()["purelib"])
    sources = [site / "tensorrt" / "__init__.pyi", *sorted((site / "tensorrt_bindings").glob("*.pyi"))]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing or len(sources) < 2:
        raise SystemExit(f"tensorrt-stubs are not installed here (missing {missing}); pip install --no-deps tensorrt-stubs")
    for source in sources:
        target = args.out / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(patch(source.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"patched tensorrt stubs written to {args.out}")


if __name__ == "__main__":
    main()
