"""runtime.Pipeline over numpy engines (tests/fakes.py): guidance batching, chunking and padding to what an engine's
profile accepts, size limits, seeding, the precision reported, and a backend plugged in through the registry.

Nothing here exports a model, so these run in the fast layer (``make test-fast``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from diffship.core.manifest import OrtEngineEntry, OrtEngineSet, TrtEngineEntry, TrtEngineSet
from diffship.core.package import ModelPackage
from diffship.core.specs import Range, ShapeRequest
from diffship.engines.backend import OpenRequest, backend_names, register_backend
from diffship.engines.errors import EngineError
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.guidance import ClassifierFreeGuidance
from diffship.runtime.images import read_parameters
from tests.fakes import FakeEngine, NumpyBackend, toy_functions, with_profile, write_package

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("fake") / "pkg")


def open_pipe(package: Path, **profiles: tuple[int, int]) -> tuple[Pipeline, NumpyBackend]:
    specs = {c: ModelPackage.open(package).variant(c, "fp32").spec for c in ("text_encoder", "unet", "vae_decoder")}
    backend = NumpyBackend({name: with_profile(specs[name], batch) for name, batch in profiles.items()})
    register_backend("numpy", lambda: backend)
    return Pipeline.from_package(package, backend="numpy"), backend


def test_a_numpy_backend_plugs_in_through_the_registry(package: Path, tmp_path: Path) -> None:
    pipe, backend = open_pipe(package)
    assert "numpy" in backend_names()
    result = pipe("a red fox", num_inference_steps=3, seed=1)
    assert result.images[0].shape == (64, 64, 3) and result.images[0].dtype == np.uint8
    assert all(isinstance(engine, FakeEngine) for engine in pipe.engines.values())
    saved = result.save(tmp_path)[0]
    assert read_parameters(saved)["backend"] == "numpy"
    pipe.close()
    assert all(engine.closed for engine in backend.opened)


def test_guidance_is_one_unet_call_on_unconditional_then_conditional(package: Path) -> None:
    pipe, _ = open_pipe(package)
    unet = pipe.engines["unet"]
    assert isinstance(unet, FakeEngine)
    rng = np.random.default_rng(0)
    cond, uncond = (rng.standard_normal((1, 77, 32)).astype(np.float32) for _ in range(2))
    sample = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    guided = ClassifierFreeGuidance(unet, {"encoder_hidden_states": cond}, {"encoder_hidden_states": uncond},
                                    7.5)(sample, 500.0)
    call = unet.fn
    alone = {name: call({"sample": sample, "timestep": np.array([500.0], np.float32), "encoder_hidden_states": e})
             ["model_output"] for name, e in (("cond", cond), ("uncond", uncond))}
    np.testing.assert_allclose(guided, alone["uncond"] + 7.5 * (alone["cond"] - alone["uncond"]), rtol=1e-6)
    assert unet.calls[-1]["sample"] == (2, 4, 8, 8)


def test_batches_are_split_to_the_engine_profile_maximum(package: Path) -> None:
    free, _ = open_pipe(package)
    expected = free(["a red fox", "a cat"], num_inference_steps=3, seed=5).images
    capped, _ = open_pipe(package, unet=(1, 1), text_encoder=(1, 2))
    result = capped(["a red fox", "a cat"], num_inference_steps=3, seed=5)
    assert {call["sample"][0] for call in capped.engines["unet"].calls} == {1}  # type: ignore[attr-defined]
    for a, b in zip(result.images, expected, strict=True):
        assert a.tobytes() == b.tobytes()


def test_static_guided_profile_serves_an_unguided_call(package: Path) -> None:
    # The defect: an engine built for the guided batch only (--static) refused guidance_scale <= 1.
    free, _ = open_pipe(package)
    expected = free("a red fox", num_inference_steps=3, guidance_scale=1.0, seed=2).images[0]
    static, _ = open_pipe(package, unet=(2, 2), text_encoder=(2, 2))
    image = static("a red fox", num_inference_steps=3, guidance_scale=1.0, seed=2).images[0]
    assert {call["sample"][0] for call in static.engines["unet"].calls} == {2}  # type: ignore[attr-defined]
    assert image.tobytes() == expected.tobytes()


def test_sizes_outside_the_profiles_are_refused_before_any_engine_runs(package: Path) -> None:
    pipe, backend = open_pipe(package, unet=(1, 2))
    with pytest.raises(PipelineInputError, match=r"take 64x64 \(width x height\) only"):
        pipe("a red fox", height=128, width=64, num_inference_steps=2)
    assert all(not engine.calls for engine in backend.opened)


def test_seeds_give_the_same_bytes_and_images_per_prompt_split_into_calls(package: Path) -> None:
    pipe, _ = open_pipe(package)
    together = pipe("a red fox", num_inference_steps=4, seed=42, num_images_per_prompt=3, scheduler="euler_a")
    again = pipe("a red fox", num_inference_steps=4, seed=42, num_images_per_prompt=3, scheduler="euler_a")
    apart = [pipe("a red fox", num_inference_steps=4, seed=42 + k, scheduler="euler_a").images[0] for k in range(3)]
    for a, b, c in zip(together.images, again.images, apart, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    assert together.images[0].tobytes() != together.images[1].tobytes()


@pytest.mark.parametrize(
    "arguments,fragment",
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer from 1 to 999"),
        ({"guidance_scale": -1.0}, "guidance_scale must be finite and >= 0"),
        ({"scheduler": "nope"}, "unknown scheduler 'nope'"),
        ({"height": 72}, "not a multiple of 64"),
        ({"seed": -3}, "seed must be an integer from 0 to"),
        ({"negative_prompt": ["a", "b"]}, "negative_prompt has 2 entries but prompt has 1"),
        ({"latents": np.zeros((1, 4, 4, 4), np.float32)}, "latents must be a numpy array of floats of shape (1, 4, 8, 8)"),
    ],
)
def test_bad_arguments_are_refused_with_what_is_allowed(package: Path, arguments: dict, fragment: str) -> None:
    pipe, backend = open_pipe(package)
    with pytest.raises(PipelineInputError) as raised:
        pipe("a red fox", **{"num_inference_steps": 2, **arguments})
    assert fragment in str(raised.value)
    assert all(not engine.calls for engine in backend.opened)


def _with_engine_sets(package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "with-sets"
    import shutil

    shutil.copytree(package, copy)
    opened = ModelPackage.open(copy)
    specs = {c: opened.variant(c, "fp32").spec for c in ("text_encoder", "unet", "vae_decoder")}
    trt = TrtEngineSet("trt-rtx-sm89-fp32", "trt-rtx", "tensorrt_rtx", "1.7.1.116", ("sm89",), "fp32",
                       ShapeRequest(Range.fixed(1), Range.fixed(64), Range.fixed(64)),
                       {c: TrtEngineEntry(c, f"engines/trt-rtx-sm89-fp32/{c}.plan", with_profile(specs[c], (1, 2)), "k",
                                          1.0, "0" * 64, "fp32") for c in specs})
    ort = OrtEngineSet("ort-cpu-x86_64-avx2-fp32", "1.31.1", "cpu-x86_64-avx2", "fp32",
                       {c: OrtEngineEntry(c, f"engines/ort-cpu-x86_64-avx2-fp32/{c}.onnx", "k", 1.0, "0" * 64,
                                          "fp32", 1) for c in specs})
    opened.update_manifest(lambda m: replace(m, engines={trt.name: trt, ort.name: ort}))
    return copy


def test_the_precision_reported_is_the_engine_set_chosen(package: Path, tmp_path: Path) -> None:
    # The defect: backend="trt" reported fp16 even when an fp32 engine set was chosen.
    from diffship.engines.tensorrt import TensorRTBackend

    copy = _with_engine_sets(package, tmp_path)
    selection = TensorRTBackend().select(ModelPackage.open(copy), OpenRequest(engine_set="trt-rtx-sm89-fp32"))
    assert selection.precision == "fp32" and selection.engine_set is not None


def test_a_backend_never_takes_another_backends_engine_set(package: Path, tmp_path: Path) -> None:
    # The defect: --backend trt --engines ort-... would have loaded an ONNX file as a TensorRT plan.
    from diffship.engines.ort import OrtBackend
    from diffship.engines.tensorrt import TensorRTBackend

    copy = ModelPackage.open(_with_engine_sets(package, tmp_path))
    with pytest.raises(EngineError, match="ONNX Runtime sets run with --backend ort"):
        TensorRTBackend().select(copy, OpenRequest(engine_set="ort-cpu-x86_64-avx2-fp32"))
    with pytest.raises(EngineError, match="TensorRT sets run with --backend trt"):
        OrtBackend().select(copy, OpenRequest(engine_set="trt-rtx-sm89-fp32"))


def test_manifest_round_trips_typed_engine_sets_and_keeps_unknown_ones(package: Path, tmp_path: Path) -> None:
    copy = _with_engine_sets(package, tmp_path)
    data = json.loads((copy / "manifest.json").read_text())
    data["engines"]["future-set"] = {"backend": "future", "precision": "fp8", "anything": [1, 2]}
    data["constants"]["added_by_a_newer_writer"] = True
    (copy / "manifest.json").write_text(json.dumps(data))
    manifest = ModelPackage.open(copy).manifest
    assert isinstance(manifest.engines["trt-rtx-sm89-fp32"], TrtEngineSet)
    assert isinstance(manifest.engines["ort-cpu-x86_64-avx2-fp32"], OrtEngineSet)
    assert manifest.to_json()["engines"]["future-set"] == data["engines"]["future-set"]


def test_generating_imports_no_build_time_code(package: Path) -> None:
    code = (
        "import sys\n"
        "from diffship.engines.backend import register_backend\n"
        "from tests.fakes import NumpyBackend\n"
        "register_backend('numpy', NumpyBackend)\n"
        "from diffship.runtime import Pipeline\n"
        "import diffship.engines.ort, diffship.engines.tensorrt\n"
        f"Pipeline.from_package({str(package)!r}, backend='numpy')('a fox', num_inference_steps=2, seed=0)\n"
        "build = ('onnx', 'onnx_graphsurgeon', 'tensorrt', 'tensorrt_rtx', 'diffship.engines.build',\n"
        "         'diffship.engines.ort.build', 'diffship.engines.tensorrt.build', 'diffship.engines.onnx.graphs',\n"
        "         'diffship.engines.onnx.fp16', 'diffship.engines.onnx.weight_maps', 'torch', 'diffusers', 'transformers')\n"
        "print([m for m in sys.modules if m in build or m.split('.')[0] in ('onnx', 'tensorrt', 'tensorrt_rtx')])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_toy_functions_depend_on_every_input(package: Path) -> None:
    # The fakes must not hide bugs: different prompts, latents and timesteps change the outputs.
    functions = toy_functions(ModelPackage.open(package).constants)
    ids = np.zeros((2, 77), np.int64)
    ids[1, 1] = 320
    hidden = functions["text_encoder"]({"input_ids": ids})["last_hidden_state"]
    assert not np.allclose(hidden[0], hidden[1])
    base = {"sample": np.ones((1, 4, 8, 8), np.float32), "timestep": np.array([10.0], np.float32),
            "encoder_hidden_states": hidden[:1]}
    out = functions["unet"](base)["model_output"]
    for change in ({"sample": base["sample"] * 2}, {"timestep": np.array([900.0], np.float32)},
                   {"encoder_hidden_states": hidden[1:]}):
        assert not np.allclose(functions["unet"]({**base, **change})["model_output"], out)
