"""Packages written by someone else, or tampered with: paths that lead outside, malformed JSON, in-place edits and
symlinks. Each is refused with one line naming the file and the key, before anything is loaded from it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diffship.core.errors import DiffshipError, PackageError
from diffship.core.integrity import sha256_file
from diffship.core.package import ModelPackage
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.tokenizer import TokenizerError
from tests.fakes import NumpyBackend, write_package


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_backend("numpy", NumpyBackend)
    return write_package(tmp_path_factory.mktemp("hostile") / "pkg")


@pytest.fixture
def copy(original: Path, tmp_path: Path) -> Path:
    target = tmp_path / "pkg"
    shutil.copytree(original, target)
    return target


def edit_manifest(package: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads((package / "manifest.json").read_text())
    change(data)
    (package / "manifest.json").write_text(json.dumps(data))


def relist(package: Path, relative: str) -> None:
    """Record a tampered file's new digest, as someone who can write the manifest too would."""
    path = package / relative
    edit_manifest(package, lambda m: m["files"].__setitem__(relative, {"sha256": sha256_file(path),
                                                                        "bytes": path.stat().st_size}))


@pytest.mark.parametrize(
    "change,fragment",
    [
        (lambda m: m["files"].__setitem__("../outside.onnx", m["files"]["tokenizer/vocab.json"]), "outside the package"),
        (lambda m: m["files"].__setitem__("/etc/passwd", m["files"]["tokenizer/vocab.json"]), "outside the package"),
        (lambda m: m["components"]["unet"]["fp32"].__setitem__("onnx", "../../elsewhere/model.onnx"), "outside"),
        (lambda m: m["components"]["unet"]["fp32"].__setitem__("files", ["/tmp/x.onnx"]), "outside the package"),
        (lambda m: m["constants"].__setitem__("scaling_factor", 0), "constants: scaling_factor must be > 0"),
        (lambda m: m["constants"].__setitem__("vae_scale_factor", "8"), "constants.vae_scale_factor must be an integer"),
        (lambda m: m["constants"].__setitem__("latent_channels", True), "constants.latent_channels must be an integer"),
        (lambda m: m["constants"]["text_encoders"][0].pop("pad_token"), "constants.text_encoders[0].pad_token is missing"),
        (lambda m: m["constants"]["text_encoders"][0].__setitem__("component", "text_encoder_9"),
         "text_encoders are text_encoder_9; a sd1 package has text_encoder"),
        (lambda m: m["constants"].__setitem__("text_encoders", []), "text_encoders is empty"),
        (lambda m: m.__setitem__("components", []), "components must be an object"),
        (lambda m: m["components"]["unet"]["fp32"]["inputs"][0].__setitem__("dtype", "float64"), "not one of"),
        (lambda m: m["components"]["unet"]["fp32"]["inputs"][0].__setitem__("shape", "batch"), "must be a list"),
        (lambda m: m["files"]["tokenizer/vocab.json"].__setitem__("bytes", -5), "a size >= 0"),
        (lambda m: m["files"]["tokenizer/vocab.json"].__setitem__("sha256", "xyz"), "hex sha256"),
        (lambda m: m.__setitem__("schema_version", "2"), "schema version '2' is not supported"),
        (lambda m: m.__setitem__("family", ["sd1"]), "manifest.family must be a string"),
        (lambda m: m.__setitem__("engines", {"x": {"backend": "ort", "precision": "fp32", "target": "cpu",
                                                   "library_version": "1", "components": {"unet": {
                                                       "graph": "../../x.onnx", "key": "k", "build_seconds": 1.0,
                                                       "source_onnx_sha256": "0", "source_dtype": "fp32",
                                                       "fused_attention": 1}}}}), "outside the package"),
    ],
)
def test_malformed_or_escaping_manifests_are_refused_by_name(copy: Path, change, fragment: str) -> None:
    edit_manifest(copy, change)
    with pytest.raises(PackageError) as refused:
        ModelPackage.open(copy)
    assert fragment in str(refused.value) and str(copy / "manifest.json") in str(refused.value)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\xff", b"[1, 2, 3]", b"{\"schema_version\": 2,"])
def test_a_manifest_that_is_not_a_json_object_is_refused(copy: Path, content: bytes) -> None:
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(PackageError, match="manifest.json"):
        ModelPackage.open(copy)


def test_keys_a_newer_writer_added_are_ignored(copy: Path) -> None:
    def add(m: dict[str, Any]) -> None:
        m["constants"]["a_future_constant"] = 3
        m["files"]["tokenizer/vocab.json"]["compression"] = "none"
        m["components"]["unet"]["fp32"]["future"] = {"x": 1}
        m["future_section"] = []

    edit_manifest(copy, add)
    assert ModelPackage.open(copy).constants.latent_channels == 4


def test_a_symlink_out_of_the_package_is_refused(copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (copy / "tokenizer" / "vocab.json").unlink()
    os.symlink(outside, copy / "tokenizer" / "vocab.json")
    relist(copy, "tokenizer/vocab.json")
    with pytest.raises(PackageError, match="outside the package"):
        Pipeline.from_package(copy, backend="numpy")


@pytest.mark.parametrize("relative", ["tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
                                      "scheduler/scheduler_config.json"])
def test_tokenizer_and_scheduler_files_edited_in_place_are_caught(copy: Path, relative: str) -> None:
    path = copy / relative
    text = path.read_text()
    path.write_text(text.replace("a", "b", 1) if relative != "tokenizer/merges.txt" else "\n".join(text.split("\n")[:-9]))
    with pytest.raises(PackageError, match="does not match the sha256"):
        Pipeline.from_package(copy, backend="numpy")


@pytest.mark.parametrize(
    "relative,content,error,fragment",
    [
        ("tokenizer/vocab.json", "[1, 2]", TokenizerError, "must map tokens to ids"),
        ("tokenizer/vocab.json", "\udcff", TokenizerError, "not valid UTF-8 JSON"),
        ("tokenizer/tokenizer_config.json", '"a string"', TokenizerError, "must be a JSON object"),
        ("tokenizer/tokenizer_config.json", '{"added_tokens_decoder": []}', TokenizerError, "added_tokens_decoder"),
        ("tokenizer/merges.txt", "#version: 0.2\na b c\n", TokenizerError, "malformed merge line"),
        ("scheduler/scheduler_config.json", "[]", PackageError, "must be a JSON object"),
        ("scheduler/scheduler_config.json", '{"_class_name": "DDIMScheduler", "num_train_timesteps": "1000"}',
         PackageError, "num_train_timesteps must be an integer"),
        ("scheduler/scheduler_config.json", '{"_class_name": "DDIMScheduler", "trained_betas": [0.1, 0.2]}',
         PackageError, "trained_betas must be 1000 numbers"),
        ("scheduler/scheduler_config.json", '{"_class_name": "DDIMScheduler", "beta_start": -1}', PackageError,
         "beta_start must lie between 0 and 1"),
        ("scheduler/scheduler_config.json", '{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true, '
         '"sigma_min": "small"}', PackageError, "sigma_min must be null or a number"),
    ],
)
def test_malformed_text_side_files_are_one_error_naming_the_file(copy: Path, relative, content, error, fragment) -> None:
    (copy / relative).write_bytes(content.encode("utf-8", "surrogateescape"))
    relist(copy, relative)
    with pytest.raises(error) as refused:
        Pipeline.from_package(copy, backend="numpy")
    assert fragment in str(refused.value) and relative.split("/")[-1] in str(refused.value)
    assert isinstance(refused.value, DiffshipError)
