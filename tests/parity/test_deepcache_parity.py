"""DeepCache end to end: runtime.Pipeline with ``cache_interval`` (ONNX Runtime, CPU, fp32) on packages whose cache
graphs ``export --cache-branch`` wrote, against diffusers' pipelines run with the DeepCache authors' own
``DeepCacheSDHelper`` (PyPI ``deepcache``) at the same branch and interval, same injected draws; bar 2/255
(docs/design.md, "Parity bars"). The torch implementation the graphs are exported from (exporter/deepcache.py) is
checked against the helper first; the non-uniform schedule, which the helper does not implement, is checked against
that torch implementation driven by the authors' schedule."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")
deepcache = pytest.importorskip("DeepCache")

from diffship.bench.reference import Reference, run_reference  # noqa: E402
from diffship.exporter.cache_graphs import add_cache_graphs  # noqa: E402
from diffship.exporter.deepcache import Branch, CachedUNet  # noqa: E402
from diffship.exporter.families.stable_diffusion import UNetBoundary  # noqa: E402
from diffship.runtime import Pipeline  # noqa: E402
from diffship.runtime.feature_cache import FeatureCaching  # noqa: E402
from tests.parity.conftest import sdxl_reference  # noqa: E402

PROMPT, NEGATIVE = "a red fox in the snow", "blurry"
STEPS, SEED = 9, 11
SD_BRANCH, XL_BRANCH = 2, 1
"""tiny: block 1, layer 0 (a branch below the first down-sampling); tiny-xl: block 0, layer 1."""


def cached_copy(package: Path, folder: Path, branch: int) -> Path:
    root = folder / package.name
    shutil.copytree(package, root)
    add_cache_graphs(root, branch)
    return root


@pytest.fixture(scope="module")
def tiny_cached(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = cached_copy(tiny_package, tmp_path_factory.mktemp("cache"), SD_BRANCH)
    return Pipeline.from_package(root, backend="ort", precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def tiny_xl_cached(tiny_xl_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = cached_copy(tiny_xl_package, tmp_path_factory.mktemp("cache-xl"), XL_BRANCH)
    return Pipeline.from_package(root, backend="ort", device="cpu")


@pytest.fixture(scope="module")
def xl_reference(tiny_xl_dir: Path) -> Reference:
    return sdxl_reference(tiny_xl_dir)


@contextlib.contextmanager
def deepcache_helper(reference: Reference, branch: int, interval: int) -> Iterator[None]:
    """The authors' helper on the reference pipeline; their branch id is ``block * 3 + layer``."""
    ours = Branch.from_id(branch, reference.pipe.unet.config)
    helper = deepcache.DeepCacheSDHelper(pipe=reference.pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=3 * ours.block + ours.layer, skip_mode="uniform")
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@contextlib.contextmanager
def torch_cached_unet(reference: Reference, branch: int, full_steps: list[bool]) -> Iterator[None]:
    """The reference pipeline's UNet replaced by exporter/deepcache.py's CachedUNet over its own modules."""
    unet = reference.pipe.unet
    cached = CachedUNet(UNetBoundary(unet).unet, Branch.from_id(branch, unet.config))
    state: dict[str, Any] = {"call": 0, "feature": None}

    def forward(sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        call = state["call"]
        state["call"] += 1
        added = kwargs.get("added_cond_kwargs")
        if full_steps[call]:
            output, state["feature"] = cached.full(sample, timestep, encoder_hidden_states, added)
        else:
            output = cached.shallow(sample, timestep, encoder_hidden_states, state["feature"], added)
        return (output,)

    unet.forward = forward
    try:
        yield
    finally:
        del unet.forward


def latents_for(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(4).standard_normal((1, 4, height // 8, width // 8)).astype(np.float32)


def reference_image(reference: Reference, scheduler: str, height: int, width: int) -> np.ndarray:
    return run_reference(reference, [PROMPT], latents_for(height, width), [SEED], [NEGATIVE], STEPS, 6.0,
                         scheduler)[0]


def our_image(pipe: Pipeline, scheduler: str, height: int, width: int, **caching: Any) -> np.ndarray:
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=6.0, scheduler=scheduler,
                height=height, width=width, latents=latents_for(height, width), seed=SEED, **caching).images[0]


def worst(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("interval", [2, 3])
def test_torch_cached_unet_is_the_deepcache_helper(interval: int, reference_pipelines: dict[str, Reference]) -> None:
    reference = reference_pipelines["tiny"]
    with deepcache_helper(reference, SD_BRANCH, interval):
        theirs = reference_image(reference, "ddim", 64, 64)
    with torch_cached_unet(reference, SD_BRANCH, FeatureCaching(interval).full_steps(STEPS)):
        ours = reference_image(reference, "ddim", 64, 64)
    plain = reference_image(reference, "ddim", 64, 64)
    assert worst(ours, theirs) <= 1
    assert worst(plain, theirs) > 4  # caching changed the picture: the comparison above means something


@pytest.mark.parametrize("scheduler,interval", [("ddim", 3), ("euler_a", 2)])
def test_sd_cache_interval_matches_the_deepcache_helper(scheduler: str, interval: int, tiny_cached: Pipeline,
                                                        reference_pipelines: dict[str, Reference]) -> None:
    with deepcache_helper(reference_pipelines["tiny"], SD_BRANCH, interval):
        expected = reference_image(reference_pipelines["tiny"], scheduler, 64, 96)
    actual = our_image(tiny_cached, scheduler, 64, 96, cache_interval=interval)
    assert worst(actual, expected) <= 2, f"max pixel difference {worst(actual, expected)}/255"


def test_sd_nonuniform_schedule_matches_the_torch_implementation(tiny_cached: Pipeline,
                                                                  reference_pipelines: dict[str, Reference]) -> None:
    caching = FeatureCaching(3, "nonuniform", center=3)
    with torch_cached_unet(reference_pipelines["tiny"], SD_BRANCH, caching.full_steps(STEPS)):
        expected = reference_image(reference_pipelines["tiny"], "ddim", 64, 64)
    actual = our_image(tiny_cached, "ddim", 64, 64, cache_interval=3, cache_schedule="nonuniform", cache_center=3)
    assert worst(actual, expected) <= 2, f"max pixel difference {worst(actual, expected)}/255"


def test_sdxl_cache_interval_matches_the_deepcache_helper(tiny_xl_cached: Pipeline, xl_reference: Reference) -> None:
    with deepcache_helper(xl_reference, XL_BRANCH, 3):
        expected = reference_image(xl_reference, "ddim", 64, 96)
    actual = our_image(tiny_xl_cached, "ddim", 64, 96, cache_interval=3)
    assert worst(actual, expected) <= 2, f"max pixel difference {worst(actual, expected)}/255"
    assert worst(actual, our_image(tiny_xl_cached, "ddim", 64, 96)) > 2  # caching changed the picture


class CountingEngine:
    """An engine that records the batch of each call and runs the one it wraps."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.spec, self.profile, self.batches = inner, inner.spec, inner.profile, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, feeds: Any) -> Any:
        self.batches.append(len(feeds["sample"]))
        return self.inner(feeds)


def test_cache_interval_with_a_guidance_cutoff_runs_the_conditional_half_of_the_feature(
        tiny_cached: Pipeline) -> None:
    # No reference runs both (the helper's cache holds the guided batch); the cut steps must still be shallow ones.
    tiny_cached.prepare(PROMPT, cache_interval=3)  # opens the cache graphs
    engines = dict(tiny_cached.engines)
    counting = CountingEngine(engines["unet_cache_shallow"])
    tiny_cached.engines = {**engines, "unet_cache_shallow": counting}  # type: ignore[dict-item]
    try:
        cut = our_image(tiny_cached, "ddim", 64, 64, cache_interval=3, guidance_cutoff=0.5)
    finally:
        tiny_cached.engines = engines
    # Steps 0..4 guided (int(9 x 0.5) = 4); full steps 0, 3, 6: step 5 is shallow on the cond half of step 3's feature.
    assert counting.batches == [2, 2, 2, 1, 1, 1]
    assert worst(cut, our_image(tiny_cached, "ddim", 64, 64, cache_interval=3)) > 0
