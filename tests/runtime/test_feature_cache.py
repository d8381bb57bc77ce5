"""DeepCache at run time (runtime/feature_cache.py): which steps are full, against the authors' own non-uniform
schedule function (PyPI ``deepcache``), the full/shallow calls over numpy engines, and the refusals."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffship.core.specs import ComponentSpec, TensorSpec
from diffship.engines.backend import register_backend
from diffship.runtime import Pipeline
from diffship.runtime.errors import PipelineInputError
from diffship.runtime.feature_cache import FeatureCache, FeatureCaching, quad_center_steps
from tests.fakes import FakeEngine, NumpyBackend, write_package


def authors_quad_center() -> Callable[..., Any]:
    """``sample_from_quad_center`` as the DeepCache package ships it (its pipeline module does not import with
    diffusers 0.42, so the function is read from its source)."""
    spec = importlib.util.find_spec("DeepCache")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the deepcache package is not installed")
    path = Path(spec.submodule_search_locations[0]) / "sd" / "pipeline_stable_diffusion.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_from_quad_center")
    namespace: dict[str, Any] = {"np": np}
    exec(compile(ast.Module([function], []), str(path), "exec"), namespace)  # noqa: S102
    return namespace["sample_from_quad_center"]  # type: ignore[no-any-return]


def test_nonuniform_steps_are_the_authors_schedule() -> None:
    theirs = authors_quad_center()
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # their complex arithmetic warns when it drops the imaginary part
        for total in range(4, 61):
            for samples in range(2, total, 3):
                for center in range(0, total, 2):
                    try:
                        expected = [int(x) for x in theirs(total, samples, center=center, pow=1.4)[0]]
                    except ValueError:
                        continue
                    assert quad_center_steps(total, samples, center) == expected, (total, samples, center)
                    checked += 1
    assert checked > 1000


def test_full_steps_uniform_and_nonuniform() -> None:
    assert FeatureCaching(3).full_steps(8) == [True, False, False, True, False, False, True, False]
    assert FeatureCaching(1).full_steps(3) == [True] * 3
    flags = FeatureCaching(5, "nonuniform", center=15).full_steps(50)
    assert [i for i, full in enumerate(flags) if full] == quad_center_steps(50, 10, 15)
    assert flags.count(True) == 10 and flags[0]


def spec(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> ComponentSpec:
    shape = ("batch", 4, "latent_height", "latent_width")
    return ComponentSpec(name, tuple(TensorSpec(n, "float32", shape) for n in inputs),
                         tuple(TensorSpec(n, "float32", shape) for n in outputs))


def test_feature_cache_runs_shallow_steps_from_the_last_full_feature_and_halves_a_guided_one() -> None:
    full = FakeEngine(spec("unet_cache_full", ("sample",), ("model_output", "cached_feature")),
                      lambda f: {"model_output": f["sample"] * 2, "cached_feature": f["sample"] + 1})
    shallow = FakeEngine(spec("unet_cache_shallow", ("sample", "cached_feature"), ("model_output",)),
                         lambda f: {"model_output": f["sample"] + f["cached_feature"]})
    cache = FeatureCache(full, shallow, [True, False, True, False])
    guided, cond = np.ones((2, 4, 2, 2), np.float32), np.full((1, 4, 2, 2), 3, np.float32)
    np.testing.assert_array_equal(cache({"sample": guided}), guided * 2)
    np.testing.assert_array_equal(cache({"sample": guided * 5}), guided * 5 + guided + 1)
    np.testing.assert_array_equal(cache({"sample": guided}), guided * 2)
    # An unguided shallow step after a guided full one reads the conditional half of its feature.
    half = np.concatenate([guided[:1], guided[1:] * 7]) + 1
    cache.feature = half
    np.testing.assert_array_equal(cache({"sample": cond}), cond + half[1:])
    assert len(full.calls) == 2 and len(shallow.calls) == 2


def test_a_guided_shallow_step_after_an_unguided_full_one_runs_full() -> None:
    full = FakeEngine(spec("unet_cache_full", ("sample",), ("model_output", "cached_feature")),
                      lambda f: {"model_output": f["sample"], "cached_feature": f["sample"]})
    shallow = FakeEngine(spec("unet_cache_shallow", ("sample", "cached_feature"), ("model_output",)),
                         lambda f: {"model_output": f["sample"]})
    cache = FeatureCache(full, shallow, [True, False])
    cache({"sample": np.ones((1, 4, 2, 2), np.float32)})
    cache({"sample": np.ones((2, 4, 2, 2), np.float32)})
    assert len(full.calls) == 2 and not shallow.calls


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    register_backend("numpy", NumpyBackend)
    return Pipeline.from_package(write_package(tmp_path_factory.mktemp("fake") / "pkg"), backend="numpy")


@pytest.mark.parametrize("arguments,fragment", [
    ({"cache_interval": 0}, "cache_interval must be a whole number from 1"),
    ({"cache_interval": 2.5}, "cache_interval must be a whole number from 1"),
    ({"cache_interval": 3, "cache_schedule": "quadratic"}, "cache_schedule must be one of uniform, nonuniform"),
    ({"cache_interval": 3, "cache_center": 4}, "give cache_schedule='nonuniform' too"),
    ({"cache_interval": 3, "cache_schedule": "nonuniform", "cache_center": 0}, "cache_center must be a step number"),
    ({"cache_interval": 3}, "has no DeepCache graphs (unet_cache_full, unet_cache_shallow)"),
])
def test_bad_caching_is_refused_with_what_is_allowed(pipe: Pipeline, arguments: dict, fragment: str) -> None:
    with pytest.raises(PipelineInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        pipe.prepare("a fox", **arguments)


def test_cache_interval_one_is_off(pipe: Pipeline) -> None:
    assert pipe.prepare("a fox", cache_interval=1).request.feature_caching is None
