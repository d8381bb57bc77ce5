"""The deployable runtime must work with torch, diffusers and transformers absent, and without build-time code
(docs/design.md, "Layers")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = """
import sys
for name in ("torch", "diffusers", "transformers", "optimum", "diffship.exporter", "tokenizers", "onnxscript"):
    sys.modules[name] = None  # any import of these now raises ImportError
"""


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_runtime_and_engines_import_without_torch_diffusers_transformers() -> None:
    result = run_blocked(
        "import diffship.runtime, diffship.runtime.tokenizer, diffship.runtime.schedulers, diffship.runtime.pipeline\n"
        "import diffship.runtime.images, diffship.runtime.grid, diffship.runtime.batching, diffship.runtime.text.sdxl\n"
        "import diffship.core, diffship.core.specs, diffship.core.package, diffship.core.manifest, diffship.core.families\n"
        "import diffship.core.profiles, diffship.core.metrics\n"
        "import diffship.engines, diffship.engines.base, diffship.engines.backend, diffship.engines.build\n"
        "import diffship.engines.ort, diffship.engines.ort.build, diffship.engines.tensorrt, diffship.engines.tensorrt.engine\n"
        "import diffship.engines.tensorrt.build, diffship.engines.onnx.graphs, diffship.engines.onnx.fp16\n"
        "import diffship.engines.onnx.weight_maps, diffship.engines.onnx.feeds, diffship.engines.onnx.session\n"
        "import diffship.serve, diffship.serve.app, diffship.serve.service, diffship.serve.metrics, diffship.serve.local\n"
        "import diffship.serve.ray_app\n"
        "print('ok')"
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_generate_an_image_without_torch(tiny_package: Path) -> None:
    result = run_blocked(
        "from diffship.runtime import Pipeline\n"
        f"pipe = Pipeline.from_package({str(tiny_package)!r}, device='cpu')\n"
        "result = pipe('a red fox in the snow', num_inference_steps=3, seed=1, scheduler='euler_a')\n"
        "assert result.images[0].shape == (64, 64, 3)\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in ('torch', 'diffusers', 'transformers')]\n"
        "assert not loaded, loaded\n"
        "print('ok')"
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_cli_generate_does_not_import_torch(tiny_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    result = run_blocked(
        "import runpy\n"
        f"sys.argv = ['cli.py', 'generate', '--package', {str(tiny_package)!r}, '--prompt', 'a fox', '--steps', '2',"
        f" '--out', {str(out)!r}]\n"
        "runpy.run_path('cli.py', run_name='__main__')\n"
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_generating_with_prebuilt_engines_loads_no_build_time_code(tiny_package: Path, tmp_path: Path) -> None:
    import shutil

    from diffship.engines.ort.build import build_ort_engines

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_package, copy)
    build_ort_engines(copy)
    result = run_blocked(
        "from diffship.runtime import Pipeline\n"
        f"pipe = Pipeline.from_package({str(copy)!r}, device='cpu')\n"
        "assert 'engines/' in str(pipe.engines['unet'].path), pipe.engines['unet'].path\n"
        "pipe('a red fox', num_inference_steps=2, seed=1)\n"
        "build = ('diffship.engines.build', 'diffship.engines.ort.build', 'diffship.engines.tensorrt.build',\n"
        "         'diffship.engines.onnx.graphs', 'diffship.engines.onnx.fp16', 'diffship.engines.onnx.weight_maps')\n"
        "loaded = [m for m in sys.modules if m in build or m.split('.')[0] in ('onnx', 'onnx_graphsurgeon', 'tensorrt',"
        " 'tensorrt_rtx')]\n"
        "assert not loaded, loaded\n"
        "print('ok')"
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_a_missing_optional_library_is_one_line_naming_the_extra(tiny_package: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_package, copy)
    result = subprocess.run(
        [sys.executable, "-c", "import sys, runpy\nsys.modules['onnx'] = None\n"
         f"sys.argv = ['cli.py', 'build-ort', '--package', {str(copy)!r}]\n"
         "runpy.run_path('cli.py', run_name='__main__')\n"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "pip install 'diffship[export]'" in result.stderr
