"""Refittable TensorRT plans (LoRA without a rebuild): build-time checks on the CPU, refits against ONNX Runtime on a
GPU (marked ``gpu``).

TensorRT-RTX 1.7 compiles refittable plans with CUDA: on a machine without a GPU its compiler fails
(``test_tensorrt_rtx_needs_cuda_for_refittable_plans`` pins that), so ``build-trt --refittable`` refuses there. The
CPU tests run everything else for real (sanitising, the weight maps, the TensorRT-RTX parser and the marking of
refittable weights in its network, the manifest record) and stand in only for the final compile step
(``serialize_network``), where they read back from the real network which weights are marked refittable. The refit
itself needs a deserialized engine (a GPU); its error handling is checked over a stand-in ``Refitter``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorrt_rtx")

import diffship.engines.tensorrt.build as build  # noqa: E402
from diffship.core.integrity import sha256_file  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.core.profiles import shape_request  # noqa: E402
from diffship.core.specs import BuildConfig, Range  # noqa: E402
from diffship.core.weights import WeightMap, read_stored  # noqa: E402
from diffship.engines.backend import OpenRequest, Selection  # noqa: E402
from diffship.engines.errors import EngineError  # noqa: E402
from diffship.engines.tensorrt.api import local_gpu_arch  # noqa: E402
from diffship.engines.tensorrt.build import BuildRequest, TensorRTBuilder, build_engines  # noqa: E402

SET = "trt-rtx-sm89-fp16-64x64-b1-static"
"""The set ``_request`` builds (one image per call at the tiny model's size)."""
FAKE_PLAN = b"not a plan: refittable plans are compiled where a GPU is"


def _request(package: Path, components: tuple[str, ...], refittable: bool = True) -> BuildRequest:
    constants = ModelPackage.open(package).constants
    return BuildRequest(package, BuildConfig(backend="trt-rtx", precision="fp16", archs=("sm89",)),
                        shape_request(constants, Range.fixed(1)), components=components, refittable=refittable)


def _initializer_names(package: Path, component: str, dtype: str) -> set[str]:
    import onnx

    graph = ModelPackage.open(package).variant(component, dtype).onnx
    return {t.name for t in onnx.load(str(package / graph), load_external_data=False).graph.initializer}


class CompileStandIn:
    """``serialize_network`` without a GPU: records, from the real network and builder config, which weights are
    marked refittable (out of every initializer of the graphs built) and whether REFIT_INDIVIDUAL is set."""

    def __init__(self, candidates: set[str]) -> None:
        self.candidates = candidates
        self.marked: list[set[str]] = []
        self.flags: list[bool] = []

    def __call__(self, builder: Any, network: Any, builder_config: Any) -> bytes:
        trt = build.api.trt
        self.flags.append(builder_config.get_flag(trt.BuilderFlag.REFIT_INDIVIDUAL))
        self.marked.append({name for name in self.candidates if network.are_weights_marked_refittable(name)})
        return FAKE_PLAN


@pytest.fixture
def as_if_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The refittable build path on this machine: a GPU is reported, and the compile step is the stand-in."""

    def install(candidates: set[str]) -> CompileStandIn:
        stand_in = CompileStandIn(candidates)
        monkeypatch.setattr(build, "local_gpu_arch", lambda: "sm89")
        monkeypatch.setattr(build, "serialize_network", stand_in)
        return stand_in

    return install


@pytest.fixture(scope="module")
def package_copy(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    package = tmp_path_factory.mktemp("refit") / "tiny"
    shutil.copytree(tiny_package, package)
    return package


def test_refittable_build_marks_exactly_the_weight_map_and_records_it(package_copy: Path, as_if_on_a_gpu) -> None:
    components = ("text_encoder", "unet")
    stand_in = as_if_on_a_gpu(set().union(*(_initializer_names(package_copy, c, "fp16") for c in components)))
    outcome = build_engines(_request(package_copy, components))
    assert [c.component for c in outcome.components] == list(components) and stand_in.flags == [True, True]
    package = ModelPackage.open(package_copy)
    for component, marked in zip(components, stand_in.marked, strict=True):
        entry = package.manifest.engines[SET].components[component]
        assert entry.refittable and entry.weight_map == f"engines/{SET}/{component}.weights.json"
        assert package.manifest.files[entry.weight_map].sha256 == sha256_file(package.path(entry.weight_map))
        engine_map = WeightMap.read(package.path(entry.weight_map), entry.weight_map)
        assert {slot.initializer for slot in engine_map.slots.values()} == marked
        # Nothing of the tiny models folds away: every weight the export mapped is refittable, with its base values
        # where the exported fp16 graph keeps them.
        variant = package.variant(component, "fp16")
        assert engine_map.graph == variant.onnx
        assert engine_map.slots == WeightMap.read(package.path(variant.weight_map), variant.weight_map).slots
        assert len(marked) == {"text_encoder": 12, "unet": 181}[component]
    assert package.verify_all() == []


def test_refittable_and_plain_plans_have_different_keys(package_copy: Path, as_if_on_a_gpu) -> None:
    as_if_on_a_gpu(set())
    package = ModelPackage.open(package_copy)
    request = _request(package_copy, ("unet",))

    def key(refittable: bool, component: str) -> str:
        builder = TensorRTBuilder(package, request.config, request.shapes, refittable)
        return builder.job(package, component, lambda line: None).key

    assert key(True, "unet") != key(False, "unet")
    # Components that take no LoRA build as usual, with the plain key (an existing plain VAE is reused).
    assert key(True, "vae_decoder") == key(False, "vae_decoder")


def test_refittable_build_of_a_package_without_weight_maps_is_refused(tmp_path: Path, tiny_package: Path,
                                                                       as_if_on_a_gpu) -> None:
    package_path = tmp_path / "before-lora"
    shutil.copytree(tiny_package, package_path)
    manifest = json.loads((package_path / "manifest.json").read_text())
    for variant in manifest["components"]["unet"].values():
        variant.pop("weight_map")
    (package_path / "manifest.json").write_text(json.dumps(manifest))
    as_if_on_a_gpu(set())
    with pytest.raises(EngineError, match="has no weight map.*re-export the package"):
        build_engines(_request(package_path, ("unet",)))
    assert ModelPackage.open(package_path).manifest.engines == {}


def test_refittable_build_without_a_gpu_is_refused(package_copy: Path) -> None:
    if local_gpu_arch() is not None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineError, match="refittable engines need an NVIDIA GPU"):
        build_engines(_request(package_copy, ("unet",)))


def test_tensorrt_rtx_needs_cuda_for_refittable_plans(package_copy: Path, tmp_path: Path) -> None:
    """Why the refusal above exists; when a TensorRT-RTX release builds refittable plans on a CPU, this fails, and
    ``build._refuse_refittable_without_gpu`` can go."""
    if local_gpu_arch() is not None:
        pytest.skip("this machine has a GPU")
    from diffship.engines.onnx.graphs import sanitize_onnx
    from diffship.engines.tensorrt.api import load_library

    package = ModelPackage.open(package_copy)
    variant = package.variant("text_encoder", "fp16")
    sanitized = sanitize_onnx(package.path(variant.onnx), tmp_path / "sanitized.onnx")
    weight_map = WeightMap.read(package.path(variant.weight_map), variant.weight_map)
    request = _request(package_copy, ("text_encoder",))
    profile = build.shape_profiles(request.shapes, package.constants, {"text_encoder": variant.spec}, frozenset())
    with pytest.raises(EngineError, match="failed to build.*CUDA"):
        build.build_plan(sanitized, profile["text_encoder"], request.config, load_library("trt-rtx"),
                         refittable=[slot.initializer for slot in weight_map.slots.values()])


def test_converted_fp16_graph_gets_a_weight_map_for_refittable_plans(tmp_path: Path, tiny_package: Path,
                                                                     as_if_on_a_gpu) -> None:
    package_path = tmp_path / "fp32-only"
    shutil.copytree(tiny_package, package_path)
    manifest = json.loads((package_path / "manifest.json").read_text())
    for component in manifest["components"].values():
        removed = component.pop("fp16")
        for relative in (*removed["files"], *([removed["weight_map"]] if "weight_map" in removed else [])):
            (package_path / relative).unlink()
            del manifest["files"][relative]
    (package_path / "manifest.json").write_text(json.dumps(manifest))
    stand_in = as_if_on_a_gpu(_initializer_names(package_path, "unet", "fp32"))
    build_engines(_request(package_path, ("unet",)))
    package = ModelPackage.open(package_path)
    converted = package.variant("unet", "fp16")
    assert converted.verification["converted_from"] == "fp32" and converted.weight_map is not None
    entry = package.manifest.engines[SET].components["unet"]
    engine_map = WeightMap.read(package.path(entry.weight_map), entry.weight_map)
    assert len(engine_map.slots) == 181 and engine_map.graph == converted.onnx
    assert {slot.initializer for slot in engine_map.slots.values()} == stand_in.marked[0]
    # Base values are the converted graph's, where it keeps them.
    import onnx
    from onnx import numpy_helper

    graph = package.path(converted.onnx)
    stored = {t.name: t for t in onnx.load(str(graph), load_external_data=False).graph.initializer}
    for slot in engine_map.slots.values():
        assert slot.dtype == "float16" and slot.file == f"{converted.onnx}.data"
        expected = numpy_helper.to_array(stored[slot.initializer], base_dir=str(graph.parent))
        assert np.array_equal(read_stored(package.root, slot), expected)
    assert package.verify_all() == []


def test_weights_folding_or_the_parser_lost_are_unmapped_with_the_reason(package_copy: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from diffship.engines.tensorrt import api
    from diffship.engines.tensorrt.api import load_library

    package = ModelPackage.open(package_copy)
    variant = package.variant("text_encoder", "fp16")
    source = WeightMap.read(package.path(variant.weight_map), variant.weight_map)
    (folded, first), (changed, second) = list(source.slots.items())[:2]
    model = onnx.load(str(package.path(variant.onnx)))
    for tensor in model.graph.initializer:
        if tensor.name == first.initializer:
            tensor.name = "folded_into_another"
        elif tensor.name == second.initializer:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2, tensor.name))
    onnx.save(model, str(tmp_path / "sanitized.onnx"))
    parsed = build.parsed_weight_map(package, variant.weight_map, tmp_path / "sanitized.onnx")
    assert set(parsed.slots) == set(source.slots) - {folded, changed}
    assert "folded it into another" in parsed.unmapped[folded] and "changed its values" in parsed.unmapped[changed]

    api.bind(load_library("trt-rtx"))
    trt = api.trt
    logger = api.capturing_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(package.path(variant.onnx)))
    third = list(source.slots.values())[2].initializer
    refused = build.mark_refittable(network, builder.create_builder_config(), [third, "not_in_the_network"])
    assert refused == ("not_in_the_network",) and network.are_weights_marked_refittable(third)
    kept = build.without(parsed, refused + (third,), "the parser has none")
    assert third not in {slot.initializer for slot in kept.slots.values()} and len(kept.slots) == len(parsed.slots) - 1


def test_weights_for_a_plan_built_without_refittable_are_refused(package_copy: Path, as_if_on_a_gpu) -> None:
    from dataclasses import replace

    from diffship.engines.tensorrt import TensorRTBackend

    as_if_on_a_gpu(set())
    package = ModelPackage.open(package_copy)
    if SET not in package.manifest.engines:
        build_engines(_request(package_copy, ("unet",)))
        package = ModelPackage.open(package_copy)
    engine_set = package.manifest.engines[SET]
    plain = replace(engine_set, components={"unet": replace(engine_set.components["unet"], refittable=False,
                                                            weight_map=None)})
    request = OpenRequest(weights={"unet": {"unet.conv_in.weight": np.zeros((32, 4, 3, 3), np.float16)}})
    with pytest.raises(EngineError, match="built without --refittable.*build-trt .*--refittable"):
        TensorRTBackend().open(package, Selection("trt", "fp16", plain), ["unet"], request)


class FakeRefitter:
    """TensorRT's Refitter as its documentation describes it, over a plan with two refittable fp16 weights; the
    refit itself needs a deserialized engine, hence a GPU."""

    prototypes = {"w_a": 6, "w_b": 4}
    missing: list[str] = []
    refits = True

    def __init__(self, engine: Any, logger: Any) -> None:
        self.logger, self.given = logger, {}

    def set_named_weights(self, name: str, weights: Any) -> bool:
        trt = build.api.trt
        if name not in self.prototypes or weights.size != self.prototypes[name] or weights.dtype != trt.DataType.HALF:
            return False
        self.given[name] = weights.numpy().copy()
        return True

    def get_weights_prototype(self, name: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(size=self.prototypes.get(name, -1), dtype=build.api.trt.DataType.HALF)

    def get_missing_weights(self) -> list[str]:
        return list(self.missing)

    def refit_cuda_engine(self) -> bool:
        if not self.refits:
            self.logger.log(build.api.trt.ILogger.Severity.ERROR, "weights validation failed: NaN in w_a")
        FakeRefitter.last = self
        return self.refits


@pytest.mark.parametrize(
    "weights,setting,fragment",
    [
        ({"w_c": np.zeros(6, np.float16)}, {}, "no refittable weights of this name.*--refittable"),
        ({"w_a": np.zeros(5, np.float16)}, {}, "holds 6 float16 values, given 5 float16"),
        ({"w_a": np.zeros(6, np.float32)}, {}, "holds 6 float16 values, given 6 float32"),
        ({"w_a": np.zeros(6, np.float16)}, {"missing": ["w_b"]}, "only together with weights not given \\(w_b\\)"),
        ({"w_a": np.zeros(6, np.float16)}, {"refits": False}, "refitting failed: weights validation failed"),
        ({"w_a": np.zeros(6, np.complex64)}, {}, "cannot refit the engine: "),
    ],
)
def test_refit_errors_are_one_line_engine_errors(monkeypatch, weights, setting: dict, fragment: str) -> None:
    from diffship.engines.tensorrt import api
    from diffship.engines.tensorrt.api import load_library
    from diffship.engines.tensorrt.engine import refit_engine

    api.bind(load_library("trt-rtx"))
    monkeypatch.setattr(api.trt, "Refitter", FakeRefitter)
    for name, value in setting.items():
        monkeypatch.setattr(FakeRefitter, name, value)
    with pytest.raises(EngineError, match=fragment) as raised:
        refit_engine(object(), weights, "trt-rtx-sm89-fp16/unet")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("trt-rtx-sm89-fp16/unet: ")


def test_refit_sets_every_weight_given(monkeypatch) -> None:
    from diffship.engines.tensorrt import api
    from diffship.engines.tensorrt.api import load_library
    from diffship.engines.tensorrt.engine import refit_engine

    api.bind(load_library("trt-rtx"))
    monkeypatch.setattr(api.trt, "Refitter", FakeRefitter)
    weights = {"w_a": np.arange(6, dtype=np.float16).reshape(2, 3).T, "w_b": np.ones(4, np.float16)}
    refit_engine(object(), weights, "unet")
    assert set(FakeRefitter.last.given) == {"w_a", "w_b"}
    # Strided (transposed) arrays go in as their values, not their memory order.
    assert np.array_equal(FakeRefitter.last.given["w_a"].reshape(3, 2), weights["w_a"])


# ---------------------------------------------------------------------------------------------- on a GPU


def _gpu_library() -> str:
    """Full TensorRT where it is installed (it builds for any GPU present), else TensorRT-RTX on the GPUs it targets."""
    from diffship.engines.tensorrt.api import RTX_ARCHS, available_backends

    if "trt" in available_backends():
        return "trt"
    if local_gpu_arch() not in RTX_ARCHS:
        pytest.skip(f"TensorRT-RTX does not run on this GPU ({local_gpu_arch()}) and full TensorRT is not installed")
    return "trt-rtx"


@pytest.fixture(scope="module")
def refittable_engines(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    backend = _gpu_library()
    package = tmp_path_factory.mktemp("refit-gpu") / "tiny"
    shutil.copytree(tiny_package, package)
    constants = ModelPackage.open(package).constants
    outcome = build_engines(BuildRequest(
        package, BuildConfig(backend=backend, precision="fp16", archs=()),
        shape_request(constants, Range(1, 1, 2), Range(64, 64, 64), Range(64, 64, 64)),
        components=("text_encoder", "unet"), refittable=True))
    return package, outcome.engine_set


def _base_weights(package: ModelPackage, entry: Any) -> dict[str, np.ndarray]:
    """The plan's refittable weights as its weight map gives them (what undoing a LoRA passes)."""
    weight_map = WeightMap.read(package.verify_file(entry.weight_map), entry.weight_map)
    return {slot.initializer: np.array(read_stored(package.root, slot)) for slot in weight_map.slots.values()}


def _perturbed(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Every weight moved by a tenth of its own spread: outputs change far beyond the fp16 bar."""
    rng = np.random.default_rng(seed)
    return {name: (w.astype(np.float32) + 0.1 * w.astype(np.float32).std() * rng.standard_normal(w.shape))
            .astype(w.dtype) for name, w in base.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("component", ["text_encoder", "unet"])
def test_refitted_plan_matches_onnxruntime_given_the_same_weights(refittable_engines, component: str) -> None:
    from diffship.core.metrics import compare, judge, random_feeds
    from diffship.engines.ort.engine import OrtEngine, OrtOptions
    from diffship.engines.tensorrt import TensorRTBackend
    from diffship.engines.tensorrt.engine import TrtEngine

    package_path, set_name = refittable_engines
    package = ModelPackage.open(package_path)
    entry = package.manifest.engines[set_name].components[component]
    assert entry.refittable
    variant = package.variant(component, entry.source_dtype)
    base_weights = _base_weights(package, entry)
    merged = _perturbed(base_weights, seed=1)
    vocab = len(json.loads(package.path("tokenizer/vocab.json").read_text(encoding="utf-8")))
    dims = {"batch": 2, "latent_height": 8, "latent_width": 8, "image_height": 64, "image_width": 64}
    feeds = {name: array.astype(variant.spec.input(name).dtype)
             for name, array in random_feeds(variant.spec, dims, np.random.default_rng(0), int_high=vocab).items()}
    backend = TensorRTBackend()
    selection = backend.select(package, OpenRequest(engine_set=set_name))

    def onnxruntime(weights: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        engine = OrtEngine(package.path(variant.onnx), variant.spec, OrtOptions(device="cpu"), weights)
        try:
            return engine(feeds)
        finally:
            engine.close()

    def misses(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
        figures = [compare(component, name, actual[name].astype(np.float32), expected[name].astype(np.float32))
                   for name in expected]
        return [why for why in (judge(component, "fp16", f) for f in figures) if why]

    base, lora = onnxruntime(None), onnxruntime(merged)
    engines = backend.open(package, selection, [component], OpenRequest(engine_set=set_name,
                                                                        weights={component: merged}))
    try:
        engine = engines[component]
        refitted = engine(feeds)
        assert misses(refitted, lora) == []
        assert misses(refitted, base), "the refit changed nothing"
        # In place, back to the base weights (what undoing a LoRA passes).
        assert isinstance(engine, TrtEngine)
        engine.refit(base_weights)
        assert misses(engine(feeds), base) == []
    finally:
        for opened in engines.values():
            opened.close()
