"""TensorRT-RTX builds on the CPU (ahead of time): plans, manifest entries, the builder's own precision report,
the engine cache, the fp32 -> fp16 conversion route, and errors that leave nothing half-written."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx")

import diffship.engines.tensorrt.build as build  # noqa: E402
from diffship.core.integrity import sha256_file  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.core.profiles import shape_request  # noqa: E402
from diffship.core.specs import BuildConfig, Range, ShapeProfile  # noqa: E402
from diffship.engines.errors import EngineError, MissingLibraryError  # noqa: E402
from diffship.engines.tensorrt.build import BuildRequest, build_engines  # noqa: E402
from diffship.engines.tensorrt.sets import default_shape_request, engine_set_name  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
"""Every component: a build covers them all by default, the VAE encoder for image input included."""
SET = "trt-rtx-sm89-fp16-64-128opt72x64-128opt72-b1-2"
"""The set ``built`` writes."""


@pytest.fixture(scope="module")
def built(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A copy of the tiny package with fp16 engines for sm89, built once for the module. The profile is tuned for
    72x72 pixels (9 latents, not a multiple of the UNet's down-sampling): the builder takes the UNet's graph there."""
    package = tmp_path_factory.mktemp("rtx") / "tiny"
    shutil.copytree(tiny_package, package)
    constants = ModelPackage.open(package).constants
    request = BuildRequest(
        package, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
        shape_request(constants, Range(1, 1, 2), Range(64, 72, 128), Range(64, 72, 128)),
    )
    return package, build_engines(request)


def test_fp16_build_writes_plans_listed_with_sha256(built) -> None:
    package_path, result = built
    package = ModelPackage.open(package_path)
    # Not the default shape request: the set's name says how it differs (sizes, batch).
    assert result.engine_set == SET
    engine_set = package.manifest.engines[SET]
    assert (engine_set.backend, engine_set.library, engine_set.archs, engine_set.precision) == (
        "trt-rtx", "tensorrt_rtx", ("sm89",), "fp16")
    assert engine_set.library_version.startswith("1.")
    for component in COMPONENTS:
        entry = engine_set.components[component]
        plan = package.path(entry.plan)
        assert plan.parent.name == SET and plan.name == f"{component}.plan"
        assert package.manifest.files[entry.plan].sha256 == sha256_file(plan)
        assert entry.source_dtype == "fp16" and entry.source_onnx_sha256 == package.manifest.files[
            package.variant(component, "fp16").onnx].sha256
        assert entry.profile.shapes  # recorded min/opt/max
    assert package.verify_all() == []
    assert engine_set.components["unet"].profile.shapes["sample"] == ((1, 4, 8, 8), (2, 4, 9, 9), (4, 4, 16, 16))


def test_fp16_build_runs_convolutions_and_matmuls_in_half(built) -> None:
    package_path, _ = built
    package = ModelPackage.open(package_path)
    for component in COMPONENTS:
        entry = package.manifest.engines[SET].components[component]
        report = json.loads(package.path(entry.layer_report).read_text())
        compute = report["summary"]["compute_layers"]
        assert compute["matmul"] and set(compute["matmul"]) == {"Half"}, (component, compute)
        if component != "text_encoder":
            assert compute["convolution"] and set(compute["convolution"]) == {"Half"}, (component, compute)
        assert report["layers"] and all("type" in layer and "inputs" in layer for layer in report["layers"])
    unet = package.manifest.engines[SET].components["unet"].compute_layers
    assert unet["convolution"]["Half"] > 20 and unet["matmul"]["Half"] > 20


def test_second_build_is_skipped_and_force_rebuilds(built) -> None:
    package_path, first = built
    constants = ModelPackage.open(package_path).constants
    request = BuildRequest(
        package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
        shape_request(constants, Range(1, 1, 2), Range(64, 72, 128), Range(64, 72, 128)),
    )
    assert all(c.skipped for c in build_engines(request).components)
    forced = build_engines(BuildRequest(**{**request.__dict__, "force": True, "components": ("text_encoder",)}))
    assert not forced.components[0].skipped


def test_changed_profile_builds_its_own_set_beside_the_first(built) -> None:
    # The defect: sets were named by arch and precision only, so a second build for other shapes replaced the first.
    package_path, _ = built
    constants = ModelPackage.open(package_path).constants
    request = BuildRequest(
        package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
        shape_request(constants, Range(1, 1, 3), Range(64, 72, 128), Range(64, 72, 128)), components=("text_encoder",),
    )
    result = build_engines(request)
    assert not result.components[0].skipped and result.engine_set == "trt-rtx-sm89-fp16-64-128opt72x64-128opt72-b1-3"
    engines = ModelPackage.open(package_path).manifest.engines
    assert engines[result.engine_set].components["text_encoder"].profile.shapes["input_ids"][2] == (6, 77)
    assert engines[SET].components["text_encoder"].profile.shapes["input_ids"][2] == (4, 77)
    assert set(engines[SET].components) == set(COMPONENTS)
    assert ModelPackage.open(package_path).verify_all() == []


def test_the_engine_key_covers_the_digest_of_every_onnx_file(built, tmp_path: Path) -> None:
    # A re-export that changes only the weights keeps every file name: the external data's digest must change the key.
    from dataclasses import replace

    from diffship.core.manifest import FileEntry
    from diffship.engines.tensorrt.build import TensorRTBuilder

    package_path, _ = built
    copy = tmp_path / "tiny"
    shutil.copytree(package_path, copy)
    package = ModelPackage.open(copy)
    variant = package.variant("unet", "fp16")
    graph, data = variant.files
    assert data == f"{graph}.data"
    builder = TensorRTBuilder(package, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
                              shape_request(package.constants, Range.fixed(1)))

    def key() -> str:
        return builder.job(ModelPackage.open(copy), "unet", lambda line: None).key

    before = key()
    package.update_manifest(lambda m: replace(m, files={**m.files, data: FileEntry("f" * 64, m.files[data].bytes)}))
    assert key() != before


def test_networks_are_created_strongly_typed_wherever_the_flag_exists(monkeypatch) -> None:
    from types import SimpleNamespace

    from diffship.engines.tensorrt import api
    from diffship.engines.tensorrt.api import load_library

    api.bind(load_library("trt-rtx"))
    assert build.strongly_typed_flags() == 1 << int(api.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) != 0
    # A library whose networks are all strongly typed may drop the member (TensorRT 11 ignores it): no flags then.
    monkeypatch.setattr(api, "trt", SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace()))
    assert build.strongly_typed_flags() == 0


def test_multi_arch_and_fp32_builds(built) -> None:
    package_path, _ = built
    constants = ModelPackage.open(package_path).constants
    shapes = shape_request(constants, Range.fixed(1))
    multi = build_engines(BuildRequest(
        package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm86", "8.9", "sm120")), shapes,
        components=("unet",)))
    assert multi.engine_set == "trt-rtx-sm86+sm89+sm120-fp16-64x64-b1-static"
    fp32 = build_engines(BuildRequest(
        package_path, BuildConfig(backend="trt-rtx", precision="fp32", archs=("sm89",)), shapes, components=("unet",)))
    summary = fp32.components[0].details.summary.compute_layers
    assert set(summary["convolution"]) == {"Float"} and set(summary["matmul"]) == {"Float"}


def test_fp32_only_package_is_converted_to_verified_fp16(tmp_path: Path, tiny_package: Path) -> None:
    package_path = tmp_path / "fp32-only"
    shutil.copytree(tiny_package, package_path)
    manifest = json.loads((package_path / "manifest.json").read_text())
    for component in manifest["components"].values():
        for relative in component.pop("fp16")["files"]:
            (package_path / relative).unlink()
            del manifest["files"][relative]
    (package_path / "manifest.json").write_text(json.dumps(manifest))
    constants = ModelPackage.open(package_path).constants
    result = build_engines(BuildRequest(
        package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
        shape_request(constants, Range.fixed(1)), components=("unet",)))
    assert result.components[0].details.route == "fp16 (converted from fp32)"
    assert set(result.components[0].details.summary.compute_layers["convolution"]) == {"Half"}
    package = ModelPackage.open(package_path)
    verification = package.variant("unet", "fp16").verification
    assert verification["passed"] and verification["converted_from"] == "fp32"
    assert package.variant("unet", "fp16").spec.input("timestep").dtype == "float32"
    assert package.verify_all() == []


def test_builder_failure_reports_builder_errors_and_leaves_nothing(built, monkeypatch) -> None:
    package_path, _ = built
    before = ModelPackage.open(package_path).manifest

    def inconsistent(request, constants, specs, guided):
        # timestep's batch range disagrees with sample's: no engine can satisfy this profile.
        return {name: ShapeProfile(name, {
            "sample": ((1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)),
            "timestep": ((3,), (3,), (3,)),
            "encoder_hidden_states": ((1, 77, 32), (1, 77, 32), (1, 77, 32)),
        }) for name in specs}

    monkeypatch.setattr(build, "shape_profiles", inconsistent)
    constants = before.constants
    shapes = shape_request(constants, Range.fixed(1))
    name = engine_set_name("trt-rtx", ("sm75",), "fp16", shapes, default_shape_request(constants))
    with pytest.raises(EngineError) as raised:
        build_engines(BuildRequest(
            package_path, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm75",)), shapes,
            components=("unet",)))
    assert "failed to build" in str(raised.value) or "cannot parse" in str(raised.value)
    assert name not in ModelPackage.open(package_path).manifest.engines
    assert not (package_path / "engines" / name / "unet.plan").exists()
    assert not list((package_path / "engines").glob(".build-*"))
    assert ModelPackage.open(package_path).manifest == before


def test_full_tensorrt_without_gpu_points_to_ahead_of_time_builds(built) -> None:
    package_path, _ = built
    constants = ModelPackage.open(package_path).constants
    with pytest.raises(EngineError, match="--backend trt-rtx --arch"):
        build_engines(BuildRequest(package_path, BuildConfig(backend="trt"), shape_request(constants, Range.fixed(1))))


def test_missing_library_names_the_extra(monkeypatch) -> None:
    import builtins

    from diffship.engines.tensorrt.api import load_library

    real_import = builtins.__import__

    def without_rtx(name, *args, **kwargs):
        if name.startswith("tensorrt_rtx"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_rtx)
    monkeypatch.delitem(sys.modules, "tensorrt_rtx", raising=False)
    with pytest.raises(MissingLibraryError, match=r"diffship\[trt-rtx\]"):
        load_library("trt-rtx")
    with pytest.raises(MissingLibraryError, match=r"diffship\[trt\]"):
        load_library("trt")  # only the stubs are installed: an empty namespace, not the library


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        (["--backend", "trt-rtx", "--arch", "sm90"], "cannot target sm90"),
        (["--backend", "trt-rtx"], "--arch"),
        (["--backend", "trt"], "needs one (none found)"),
        (["--backend", "trt-rtx", "--arch", "sm89", "--static", "--batch", "1-2"], "--static"),
        (["--backend", "trt-rtx", "--arch", "sm89", "--min-size", "100"], "not a multiple of 8 pixels"),
        (["--backend", "trt-rtx", "--arch", "banana"], "compute capability"),
        (["--backend", "trt-rtx", "--arch", "sm89", "--components", "unet,refiner"], "refiner"),
        (["--backend", "trt-rtx", "--arch", "sm89", "--workspace", "lots"], "--workspace"),
        (["--backend", "trt-rtx", "--arch", "sm89", "--refittable"], "need an NVIDIA GPU"),
    ],
)
def test_build_trt_cli_errors(built, arguments: list[str], fragment: str) -> None:
    package_path, _ = built
    result = run_cli("build-trt", "--package", str(package_path), *arguments)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_build_trt_cli_prints_table(built) -> None:
    package_path, _ = built
    result = run_cli("build-trt", "--package", str(package_path), "--backend", "trt-rtx", "--arch", "sm89",
                     "--batch", "1-2", "--min-size", "64", "--max-size", "128", "--height", "72", "--width", "72")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout and "convolutions" in result.stdout and "Half" in result.stdout
