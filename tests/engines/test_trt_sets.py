"""TensorRT engine sets per shape request: builds for different shapes coexist under readable names (the default
request keeps the plain name), and the runtime picks among them sensibly, naming the others (TensorRT-RTX builds on
the CPU, ahead of time)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from diffship.core.package import ModelPackage
from diffship.core.profiles import shape_request
from diffship.core.specs import BuildConfig, Range
from diffship.engines.tensorrt.sets import default_shape_request, engine_set_name
from tests.fakes import TINY

SD15_LIKE = replace(TINY, default_height=512, default_width=512, spatial_multiple=8)


@pytest.mark.parametrize("batch,size,chunks,expected", [
    (None, None, None, "trt-rtx-sm86-fp16"),
    (Range.fixed(1), Range.fixed(512), None, "trt-rtx-sm86-fp16-512x512-b1-static"),
    (Range(1, 1, 2), None, None, "trt-rtx-sm86-fp16-b1-2"),
    (None, Range(256, 768, 1024), None, "trt-rtx-sm86-fp16-256-1024opt768x256-1024opt768"),
    (None, None, Range(1, 1, 3), "trt-rtx-sm86-fp16-chunks1-3"),
])
def test_set_names_say_what_differs_from_the_default_request(batch, size, chunks, expected: str) -> None:
    default = default_shape_request(SD15_LIKE)
    assert (default.batch, default.height, default.prompt_chunks) == (Range(1, 1, 4), Range(256, 512, 1024),
                                                                      Range(1, 1, 1))
    shapes = shape_request(SD15_LIKE, batch or default.batch, size or default.height, size or default.width,
                           chunks or default.prompt_chunks)
    assert engine_set_name("trt-rtx", ("sm86",), "fp16", shapes, default) == expected


@pytest.fixture(scope="module")
def two_sets(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The tiny package with text-encoder plans for the default request and for one static shape."""
    pytest.importorskip("tensorrt_rtx")
    from diffship.engines.tensorrt.build import BuildRequest, build_engines

    package = tmp_path_factory.mktemp("sets") / "tiny"
    shutil.copytree(tiny_package, package)
    constants = ModelPackage.open(package).constants
    config = BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",))
    default = build_engines(BuildRequest(package, config, default_shape_request(constants),
                                         components=("text_encoder",)))
    static = build_engines(BuildRequest(package, config, shape_request(constants, Range.fixed(2)),
                                        components=("text_encoder",)))
    return package, default.engine_set, static.engine_set


def test_builds_for_different_shapes_coexist(two_sets: tuple[Path, str, str]) -> None:
    package_path, default, static = two_sets
    assert (default, static) == ("trt-rtx-sm89-fp16", "trt-rtx-sm89-fp16-64x64-b2-static")
    package = ModelPackage.open(package_path)
    plans = {name: package.manifest.engines[name].components["text_encoder"] for name in (default, static)}
    assert plans[default].profile.shapes["input_ids"] == ((1, 77), (2, 77), (8, 77))  # guided: twice the images
    assert plans[static].profile.shapes["input_ids"] == ((4, 77), (4, 77), (4, 77))
    assert {Path(entry.plan).parent.name for entry in plans.values()} == {default, static}
    assert package.verify_all() == []


def test_the_runtime_prefers_the_default_set_and_names_the_others(two_sets: tuple[Path, str, str], monkeypatch,
                                                                  caplog) -> None:
    import diffship.engines.tensorrt as trt_backend

    package_path, default, static = two_sets
    package = ModelPackage.open(package_path)
    monkeypatch.setattr(trt_backend, "local_gpu_arch", lambda: "sm89")
    with caplog.at_level(logging.WARNING, logger="diffship.engines.tensorrt"):
        chosen = trt_backend.choose_engine_set(package, None, None)
    assert chosen.name == default
    assert f"running engines/{default}" in caplog.text and static in caplog.text and "--engines" in caplog.text
    assert trt_backend.choose_engine_set(package, static, None).name == static  # named: taken as it is


def test_without_the_default_set_the_broadest_is_run(two_sets: tuple[Path, str, str], tmp_path: Path,
                                                     monkeypatch, caplog) -> None:
    import diffship.engines.tensorrt as trt_backend

    package_path, default, static = two_sets
    copy = tmp_path / "tiny"
    shutil.copytree(package_path, copy)
    opened = ModelPackage.open(copy)
    dynamic = replace(opened.manifest.engines[default], name="trt-rtx-sm89-fp16-b1-2",
                      request=shape_request(opened.constants, Range(1, 1, 2)))
    opened.update_manifest(lambda m: replace(m, engines={static: m.engines[static], dynamic.name: dynamic}))
    monkeypatch.setattr(trt_backend, "local_gpu_arch", lambda: "sm89")
    with caplog.at_level(logging.WARNING, logger="diffship.engines.tensorrt"):
        chosen = trt_backend.choose_engine_set(ModelPackage.open(copy), None, "fp16")
    assert chosen.name == dynamic.name  # a static set takes one shape; the dynamic one more
    assert static in caplog.text
