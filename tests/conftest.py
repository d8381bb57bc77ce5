"""Shared fixtures: tiny model packages exported once per session, and the diffusers folders they came from.

Set DIFFSHIP_TEST_CACHE=/some/dir to keep packages between runs while developing: the exporter skips an export
whose inputs (weights, dtypes, exporter, versions) are unchanged, so a warm cache costs seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # Verification records, reference copies for cold-start benchmarks: keep them out of the user's cache.
    if "DIFFSHIP_CACHE" not in os.environ:
        import tempfile

        os.environ["DIFFSHIP_CACHE"] = tempfile.mkdtemp(prefix="diffship-test-cache-")


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


EXPORT_FIXTURES = {"tiny_package", "tiny_xl_package", "tiny_xl_dir", "tiny_v_package", "tiny_inpaint_package", "shapes_package", "packages", "pretrained_dirs", "reference_pipelines", "cache_dir", "ort_built_package", "lora_files"}
"""Fixtures that export models with torch: a test using one is marked ``export`` (left out of make test-fast)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.export)
    if _gpu_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found: nvidia-smi missing or failing)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("DIFFSHIP_TEST_CACHE")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("packages")


def _export(cache_dir: Path, model: str | None, name: str, dtypes: tuple[str, ...], exporter: str = "dynamo",
            model_path: Path | None = None) -> Path:
    from exporter.onnx_export import ExportOptions
    from exporter.package import ExportRequest, export_package

    out = cache_dir / name
    export_package(ExportRequest(out=out, model=model, model_path=model_path, dtypes=dtypes,
                                 options=ExportOptions(exporter=exporter)))
    return out


def _save_pretrained(cache_dir: Path, model: str) -> Path:
    """The model's diffusers folder (``save_pretrained``), written once into the cache."""
    from exporter.sources import load_source

    folder = cache_dir / f"{model}-diffusers"
    if not (folder / "model_index.json").is_file():
        source = load_source(model)
        staging = cache_dir / f".{model}-diffusers.partial"
        shutil.rmtree(staging, ignore_errors=True)
        source.diffusers_pipeline().save_pretrained(staging)
        # save_pretrained writes every scheduler default explicitly (timestep_spacing "leading", ...), which
        # changes what a swapped-in scheduler inherits. Keep the source's own file, as a hub folder has it and
        # as the package holds it.
        shutil.copyfile(source.scheduler_config_path, staging / "scheduler" / "scheduler_config.json")
        source.close()
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_package(cache_dir: Path) -> Path:
    """SD 1.x tiny model, fp32 and fp16 ONNX (dynamo exporter)."""
    return _export(cache_dir, "tiny", "tiny", ("fp32", "fp16"))


@pytest.fixture(scope="session")
def tiny_v_package(cache_dir: Path) -> Path:
    """SD 2.x (v-prediction) tiny model, fp32 ONNX (legacy exporter: 10 s where dynamo fp32+fp16 takes two minutes of
    CI; the dynamo exporter and fp16 are covered by ``tiny``, and the legacy exporter cannot write fp16 text encoders)."""
    return _export(cache_dir, "tiny-v", "tiny-v", ("fp32",), exporter="legacy")


@pytest.fixture(scope="session")
def tiny_inpaint_package(cache_dir: Path) -> Path:
    """SD 1.x tiny inpainting model (9-channel UNet), fp32 ONNX (legacy exporter: seconds where dynamo takes minutes;
    both are verified against torch at export, odd latent sizes included)."""
    return _export(cache_dir, "tiny-inpaint", "tiny-inpaint", ("fp32",), exporter="legacy")


@pytest.fixture(scope="session")
def shapes_package(cache_dir: Path) -> Path:
    """The trained shapes model (models/shapes), fp32 ONNX (legacy exporter, for CI time as with tiny-v)."""
    return _export(cache_dir, "shapes", "shapes", ("fp32",), exporter="legacy")


@pytest.fixture(scope="session")
def ort_built_package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny`` with its build-ort CPU engines (fp32)."""
    from engines.ort.build import build_ort_engines

    package = tmp_path_factory.mktemp("ort-build") / "tiny"
    shutil.copytree(tiny_package, package)
    build_ort_engines(package)
    return package


@pytest.fixture(scope="session")
def lora_files(pretrained_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LoRAs made with peft on the tiny models (scripts/make_lora.py): ``r4`` (rank 4, alpha 8, UNet attention,
    projections, feed-forward and 3x3 resnet convolutions, and the text encoder; alpha in the file's metadata),
    ``r8`` (rank 8, UNet attention only, no metadata: alpha = rank), ``r4-kohya`` (``r4`` in the kohya format),
    ``v-r4`` (rank 4 on tiny-v)."""
    from scripts.make_lora import make_lora, to_kohya

    folder = tmp_path_factory.mktemp("loras")
    files = {
        "r4": make_lora(pretrained_dirs["tiny"], folder / "r4.safetensors", rank=4, alpha=8, seed=1),
        "r8": make_lora(pretrained_dirs["tiny"], folder / "r8.safetensors", rank=8, seed=2,
                        unet_targets=("to_q", "to_k", "to_v", "to_out.0"), text_targets=(), metadata=False),
        "v-r4": make_lora(pretrained_dirs["tiny-v"], folder / "v-r4.safetensors", rank=4, alpha=4, seed=3),
    }
    files["r4-kohya"] = to_kohya(files["r4"], folder / "r4-kohya.safetensors")
    return files


@pytest.fixture(scope="session")
def packages(tiny_package: Path, tiny_v_package: Path) -> dict[str, Path]:
    return {"tiny": tiny_package, "tiny-v": tiny_v_package}


@pytest.fixture(scope="session")
def pretrained_dirs(cache_dir: Path) -> dict[str, Path]:
    """``save_pretrained`` folders of the tiny models: what diffusers loads as the reference."""
    return {model: _save_pretrained(cache_dir, model) for model in ("tiny", "tiny-v")}


@pytest.fixture(scope="session")
def tiny_xl_dir(cache_dir: Path) -> Path:
    """``tiny-xl``'s StableDiffusionXLPipeline folder (``save_pretrained``): the parity reference's weights."""
    return _save_pretrained(cache_dir, "tiny-xl")


@pytest.fixture(scope="session")
def tiny_xl_package(cache_dir: Path, tiny_xl_dir: Path) -> Path:
    """SDXL tiny model, fp32 ONNX, exported from its diffusers folder as ``--model-path`` does (legacy exporter, for
    CI time: seconds; every component is verified against torch at export)."""
    return _export(cache_dir, None, "tiny-xl", ("fp32",), exporter="legacy", model_path=tiny_xl_dir)


def images_alone_and_from_threads(pipe: Any, calls: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The first image of each call made one by one, then of the same calls made at once from one thread each."""
    import threading

    alone = [pipe(**call).images[0] for call in calls]
    together: list[Any] = [None] * len(calls)

    def run(k: int) -> None:
        together[k] = pipe(**calls[k]).images[0]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return alone, together


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python cli.py ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
