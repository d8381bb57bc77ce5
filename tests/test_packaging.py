"""What a pip install of diffship holds: one top-level name (``diffship``), the trained shapes model, the README's
tools, the committed configs and tables; and ``from diffship import Pipeline`` works inside a project whose own
packages have the generic names diffship's layers have (``core``, ``runtime``, ``engines``, ...)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

IN_THE_WHEEL = ("diffship/models/shapes/unet/diffusion_pytorch_model.safetensors",
                "diffship/models/shapes/classifier.onnx", "diffship/models/shapes/quality_prompts.json",
                "diffship/tools/make_mask.py", "diffship/tools/make_lora.py", "diffship/cli.py",
                "diffship/commands/generate.py", "diffship/exporter/configs/tiny/unet.json",
                "diffship/exporter/data/clip/bpe_simple_vocab_16e6.txt.gz", "diffship/runtime/data/clip_unicode.json")


@pytest.mark.slow
def test_packaging_wheel_installs_one_name_with_models_tools_and_data(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = tmp_path.glob("diffship-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"diffship"}
    missing = [name for name in IN_THE_WHEEL if name not in names]
    assert not missing, missing
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "diffship = diffship.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_packaging_imports_from_a_project_with_its_own_core_runtime_and_engines(tmp_path: Path) -> None:
    # A service's own packages, named as diffship's layers are; they come first on sys.path (the working folder).
    for name in ("core", "runtime", "engines", "serve", "bench", "commands"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("MINE = True\n")
    (tmp_path / "core" / "errors.py").write_text("raise ImportError('the project\\'s own core.errors')\n")
    code = ("import core, runtime\n"
            "from diffship import Pipeline\n"
            "from diffship.runtime import Pipeline as Same\n"
            "from diffship.core.errors import DiffshipError\n"
            "assert Pipeline is Same and core.MINE and runtime.MINE\n"
            "print('ok')\n")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env=environment, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
