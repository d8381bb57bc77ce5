"""Export of a single-file checkpoint against export of the diffusers folder it came from (the same weights digest,
the same ONNX outputs within the fp32 bar, the same images), and end to end: runtime.Pipeline on the file's package
against diffusers' pipeline loaded from the same file with from_single_file (docs/design.md, "Parity bars": 2/255)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.core.metrics import compare, judge, random_feeds  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.engines.ort.engine import OrtEngine, OrtOptions  # noqa: E402
from diffship.exporter.onnx_export import ExportOptions  # noqa: E402
from diffship.exporter.package import ExportRequest, export_package  # noqa: E402
from diffship.exporter.single_file import load_pipeline, plan_load, write_config_folder  # noqa: E402
from diffship.exporter.sources import SourceOptions  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from tests.exporter import single_files  # noqa: E402
from tests.exporter.single_files import ARCHITECTURES  # noqa: E402

tiny_files = single_files.tiny_files
FOLDER_PACKAGES = {"tiny": "tiny_legacy_package", "tiny-v": "tiny_v_package", "tiny-inpaint": "tiny_inpaint_package",
                   "tiny-xl": "tiny_xl_package", "tiny-xl-refiner": "tiny_xl_refiner_package"}
"""Each tiny model's shared package, exported (legacy, fp32) from the preset or the diffusers folder the file came from."""
PROMPT, NEGATIVE, SIZE, STEPS, SEED = "a red fox in the snow", "blurry", 64, 4, 21


def request(model: str, file: Path, out: Path) -> ExportRequest:
    return ExportRequest(out=out, model_path=file, dtypes=("fp32",), options=ExportOptions(exporter="legacy"),
                         source_options=SourceOptions(config=model))


@pytest.fixture(scope="module")
def file_package(tiny_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """model -> the package exported from its single file (once per module)."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("file-packages")

    def make(model: str) -> Path:
        if model not in made:
            result = export_package(request(model, tiny_files[model], root / model))
            assert not result.skipped and all(r.verification.passed for r in result.reports)
            made[model] = root / model
        return made[model]

    return make


def onnx_outputs(package: ModelPackage, component: str) -> dict[str, np.ndarray]:
    variant = package.variant(component, "fp32")
    dims = {"batch": 2, "latent_height": 8, "latent_width": 8, "image_height": 64, "image_width": 64,
            "text_length": package.constants.text_max_length}
    feeds = random_feeds(variant.spec, dims, np.random.default_rng(0), int_high=1000)
    engine = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cpu"))
    try:
        return engine(feeds)
    finally:
        engine.close()


@pytest.mark.parametrize("model", list(FOLDER_PACKAGES))
def test_single_file_export_matches_the_folder_export(model: str, file_package: Callable[[str], Path],
                                                      request: pytest.FixtureRequest,
                                                      tiny_files: dict[str, Path]) -> None:
    ours = ModelPackage.open(file_package(model))
    folder = ModelPackage.open(request.getfixturevalue(FOLDER_PACKAGES[model]))
    source = ours.manifest.source
    assert source["weights_sha256"] == folder.manifest.source["weights_sha256"]
    assert (source["kind"], source["architecture"], source["config"]) == ("single_file", ARCHITECTURES[model], model)
    assert source["path"] == str(tiny_files[model].resolve()) and len(source["file_sha256"]) == 64
    assert ours.constants == folder.constants
    assert set(ours.manifest.components) == set(folder.manifest.components)
    for component in folder.manifest.components:
        actual, expected = onnx_outputs(ours, component), onnx_outputs(folder, component)
        for name, reference in expected.items():
            figures = compare(component, name, actual[name].astype(np.float32), reference.astype(np.float32))
            assert judge(component, "fp32", figures) is None, (component, name, figures)


def images(package: Path) -> np.ndarray:
    pipe = Pipeline.from_package(package, backend="ort", device="cpu")
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    result = pipe([PROMPT], negative_prompt=[NEGATIVE], num_inference_steps=STEPS, guidance_scale=5.0, height=SIZE,
                  width=SIZE, latents=latents, seed=SEED)
    return np.stack(result.images).astype(int)


@pytest.mark.parametrize("model", ["tiny", "tiny-v", "tiny-xl"])
def test_single_file_export_draws_the_folder_exports_images(model: str, file_package: Callable[[str], Path],
                                                            request: pytest.FixtureRequest) -> None:
    ours, theirs = images(file_package(model)), images(request.getfixturevalue(FOLDER_PACKAGES[model]))
    assert int(np.abs(ours - theirs).max()) <= 1


@pytest.mark.parametrize("model", ["tiny", "tiny-v", "tiny-xl"])
def test_single_file_package_matches_diffusers_from_single_file(model: str, file_package: Callable[[str], Path],
                                                                tiny_files: dict[str, Path],
                                                                tmp_path: Path) -> None:
    plan = plan_load(tiny_files[model], SourceOptions(config=model))
    architecture = plan.checkpoint.architecture
    folder = write_config_folder(tmp_path / "config", architecture.name, architecture.family, plan.config,
                                 plan.prediction_type)
    pipe = load_pipeline(plan, folder)
    pipe.set_progress_bar_config(disable=True)
    if hasattr(pipe, "watermark"):
        pipe.watermark = None
    reference = Reference(pipe, pipe.scheduler.config, "cpu", "fp32", 8)
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)
    expected = run_reference(reference, [PROMPT], latents, [SEED], [NEGATIVE], STEPS, 5.0, None)
    worst = int(np.abs(images(file_package(model)) - np.stack(expected).astype(int)).max())
    assert worst <= 2, f"max pixel difference {worst}/255"


def test_single_file_export_again_is_skipped(file_package: Callable[[str], Path], tiny_files: dict[str, Path]) -> None:
    out = file_package("tiny")
    before = (out / "manifest.json").read_bytes()
    assert export_package(request("tiny", tiny_files["tiny"], out)).skipped
    assert (out / "manifest.json").read_bytes() == before


def test_single_file_source_is_rebuilt_from_the_manifest(file_package: Callable[[str], Path]) -> None:
    # What bench and parity do to get diffusers' side of a package: the recorded file, configs and overrides.
    from diffship.exporter.sources import load_source_from_info

    recorded = ModelPackage.open(file_package("tiny-v")).manifest.source
    rebuilt = load_source_from_info(dict(recorded))
    assert rebuilt.weights_sha256() == recorded["weights_sha256"]
    assert rebuilt.scheduler_config()["prediction_type"] == recorded["prediction_type"] == "v_prediction"
