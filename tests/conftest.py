"""Shared fixtures: tiny model packages exported once per session, and the diffusers folders they came from.

The tests that need no exported package run first; meanwhile a second process (``python -m tests.packages``) exports
the shared packages, each under a lock that the fixtures wait on, so the two cores overlap the exports with those
tests. DIFFSHIP_TEST_PREFETCH=0 turns that off (the fixtures then export on first use).

Set DIFFSHIP_TEST_CACHE=/some/dir to keep packages between runs while developing: the exporter skips an export
whose inputs (weights, dtypes, exporter, versions) are unchanged, so a warm cache costs seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests import packages as shared

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = pytest.StashKey[Path]()
OWNED = pytest.StashKey[bool]()
PREFETCH = pytest.StashKey["subprocess.Popen[bytes]"]()


def pytest_configure(config: pytest.Config) -> None:
    # Verification records, reference copies for cold-start benchmarks: keep them out of the user's cache.
    if "DIFFSHIP_CACHE" not in os.environ:
        os.environ["DIFFSHIP_CACHE"] = tempfile.mkdtemp(prefix="diffship-test-cache-")
    configured = os.environ.get("DIFFSHIP_TEST_CACHE")
    config.stash[OWNED] = not configured
    config.stash[PACKAGES] = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="diffship-test-packages-"))


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    wanted = sorted({name for item in session.items for name in getattr(item, "fixturenames", ())} & set(shared.MAKERS))
    if not wanted or config.option.collectonly or os.environ.get("DIFFSHIP_TEST_PREFETCH", "1") == "0":
        return
    packages = config.stash[PACKAGES]
    packages.mkdir(parents=True, exist_ok=True)
    with open(packages / "prefetch.log", "ab") as log:
        config.stash[PREFETCH] = subprocess.Popen([sys.executable, "-m", "tests.packages", str(packages), *wanted],
                                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def pytest_unconfigure(config: pytest.Config) -> None:
    process = config.stash.get(PREFETCH, None)
    if process is not None and process.poll() is None:
        process.terminate()
        process.wait(timeout=60)
    if config.stash.get(OWNED, False):
        shutil.rmtree(config.stash[PACKAGES], ignore_errors=True)


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


EXPORT_FIXTURES = {"tiny_package", "tiny_legacy_package", "tiny_xl_package", "tiny_xl_dir", "tiny_xl_refiner_package", "tiny_xl_refiner_dir", "tiny_v_package", "tiny_inpaint_package", "shapes_package", "packages", "pretrained_dirs", "reference_pipelines", "cache_dir", "ort_built_package", "lora_files", "file_package"}
"""Fixtures that export models with torch: a test using one is marked ``export`` (left out of make test-fast)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if EXPORT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.export)
    # Tests without exports first (in their order), while the packages are exported beside them.
    items.sort(key=lambda item: "export" in item.keywords)
    if _gpu_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found: nvidia-smi missing or failing)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(pytestconfig: pytest.Config) -> Path:
    """Where the shared packages are exported (DIFFSHIP_TEST_CACHE, or a folder removed at the end of the session)."""
    path = pytestconfig.stash[PACKAGES]
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_package(cache_dir: Path) -> Path:
    """SD 1.x tiny model, fp32 and fp16 ONNX (dynamo exporter)."""
    return shared.tiny(cache_dir)


@pytest.fixture(scope="session")
def tiny_legacy_package(cache_dir: Path) -> Path:
    """SD 1.x tiny model, fp32 ONNX, as ``ExportRequest(model="tiny", options=ExportOptions(exporter="legacy"))``
    writes it (the same export key): re-export tests copy it rather than export it again. Never modify it."""
    return shared.tiny_legacy(cache_dir)


@pytest.fixture(scope="session")
def tiny_v_package(cache_dir: Path) -> Path:
    """SD 2.x (v-prediction) tiny model, fp32 ONNX (legacy exporter; see tests/packages.py)."""
    return shared.tiny_v(cache_dir)


@pytest.fixture(scope="session")
def tiny_inpaint_package(cache_dir: Path) -> Path:
    """SD 1.x tiny inpainting model (9-channel UNet), fp32 ONNX (legacy exporter)."""
    return shared.tiny_inpaint(cache_dir)


@pytest.fixture(scope="session")
def shapes_package(cache_dir: Path) -> Path:
    """The trained shapes model (diffship/models/shapes), fp32 ONNX (legacy exporter)."""
    return shared.shapes(cache_dir)


@pytest.fixture(scope="session")
def ort_built_package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny`` with its build-ort CPU engines (fp32)."""
    from diffship.engines.ort.build import build_ort_engines

    package = tmp_path_factory.mktemp("ort-build") / "tiny"
    shutil.copytree(tiny_package, package)
    build_ort_engines(package)
    return package


@pytest.fixture(scope="session")
def lora_files(pretrained_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LoRAs made with peft on the tiny models (diffship/tools/make_lora.py): ``r4`` (rank 4, alpha 8, UNet attention,
    projections, feed-forward and 3x3 resnet convolutions, and the text encoder; alpha in the file's metadata),
    ``r8`` (rank 8, UNet attention only, no metadata: alpha = rank), ``r4-kohya`` (``r4`` in the kohya format),
    ``v-r4`` (rank 4 on tiny-v)."""
    from diffship.tools.make_lora import make_lora, to_kohya

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
    return shared.pretrained(cache_dir)


@pytest.fixture(scope="session")
def tiny_xl_dir(cache_dir: Path) -> Path:
    """``tiny-xl``'s StableDiffusionXLPipeline folder (``save_pretrained``): the parity reference's weights."""
    return shared.save_pretrained(cache_dir, "tiny-xl")


@pytest.fixture(scope="session")
def tiny_xl_package(cache_dir: Path, tiny_xl_dir: Path) -> Path:
    """SDXL tiny model, fp32 ONNX, exported from its diffusers folder as ``--model-path`` does (legacy exporter)."""
    return shared.tiny_xl(cache_dir)


@pytest.fixture(scope="session")
def tiny_xl_refiner_dir(cache_dir: Path) -> Path:
    """``tiny-xl-refiner``'s StableDiffusionXLImg2ImgPipeline folder (no first text encoder)."""
    return shared.save_pretrained(cache_dir, "tiny-xl-refiner")


@pytest.fixture(scope="session")
def tiny_xl_refiner_package(cache_dir: Path, tiny_xl_refiner_dir: Path) -> Path:
    """SDXL refiner tiny model, fp32 ONNX, exported from its diffusers folder (legacy exporter)."""
    return shared.tiny_xl_refiner(cache_dir)


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
