"""The fast test layer: engines over numpy functions and packages without any ONNX file, so pipeline, guidance,
chunking, profile, seeding and validation tests run in milliseconds without exporting anything.

``FakeEngine(spec, fn)`` checks its feeds exactly as real engines do (``check_feeds``: names, dtypes, shapes, profile)
and records every call. ``write_package`` writes a complete manifest (schema, family, constants, specs) with the real
CLIP tokenizer files and a scheduler config, and lists no ONNX; ``NumpyBackend`` opens such a package (or any
package) through the same ``Backend`` protocol the real backends implement.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffship.core.families import get_family
from diffship.core.manifest import ComponentVariant, Manifest
from diffship.core.package import ModelPackage
from diffship.core.specs import ComponentSpec, PipelineConstants, ShapeProfile, TextEncoderConstants
from diffship.engines.backend import BackendOptions, OpenRequest, OpenSettings, Selection, own_options, refuse_settings
from diffship.engines.base import EngineBase, check_feeds

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "diffship" / "exporter" / "configs"

TINY = PipelineConstants(
    latent_channels=4, vae_scale_factor=8, scaling_factor=0.18215, prediction_type="epsilon", default_height=64,
    default_width=64, text_max_length=77, spatial_multiple=64,
    text_encoders=(TextEncoderConstants("text_encoder", "tokenizer", 32, "<|endoftext|>", 49408),),
)

Function = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class FakeEngine(EngineBase):
    """An engine whose computation is ``fn(feeds) -> outputs``, checked and recorded like a real one."""

    def __init__(self, spec: ComponentSpec, fn: Function, profile: ShapeProfile | None = None) -> None:
        self.spec, self.fn, self.profile = spec, fn, profile
        self.calls: list[dict[str, tuple[int, ...]]] = []
        self.closed = False

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_feeds(self.spec, feeds, self.profile)
        self.calls.append({name: array.shape for name, array in checked.items()})
        outputs = self.fn(checked)
        assert set(outputs) == {t.name for t in self.spec.outputs}, (self.spec.name, set(outputs))
        return {t.name: np.asarray(outputs[t.name], dtype=t.dtype) for t in self.spec.outputs}

    def close(self) -> None:
        self.closed = True


def toy_functions(constants: PipelineConstants, seed: int = 0) -> dict[str, Function]:
    """Deterministic stand-ins that use every input, so prompts, guidance and latents all change the picture."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((49408, constants.unet_text_size)).astype(np.float32) * 0.5
    mix = rng.standard_normal((constants.unet_text_size, constants.latent_channels)).astype(np.float32) * 0.2
    factor = constants.vae_scale_factor

    def text_encoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        hidden = np.cumsum(table[feeds["input_ids"]], axis=1) / np.arange(1, feeds["input_ids"].shape[1] + 1)[:, None]
        return {"last_hidden_state": hidden, "pooler_output": hidden[:, -1]}

    def unet(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Elementwise products and per-item sums: the result of an item does not depend on the batch around it
        # (a BLAS matrix product rounds differently with the batch size).
        text = (feeds["encoder_hidden_states"].astype(np.float32).mean(axis=1)[:, :, None] * mix).sum(axis=1)
        time = (feeds["timestep"].astype(np.float32) / 1000.0)[:, None, None, None]
        sample = feeds["sample"].astype(np.float32)[:, : constants.latent_channels]
        # An inpainting UNet's extra channels (mask, masked-image latents) shift the output where they are set.
        extra = feeds["sample"].astype(np.float32)[:, constants.latent_channels :].mean(axis=1, keepdims=True) \
            if feeds["sample"].shape[1] > constants.latent_channels else 0.0
        return {"model_output": 0.3 * sample + text[:, :, None, None] + 0.1 * time * np.tanh(sample) + 0.2 * extra}

    def vae_decoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        latents = feeds["latent_sample"].astype(np.float32)[:, :3]
        return {"sample": np.tanh(latents.repeat(factor, axis=2).repeat(factor, axis=3))}

    def vae_encoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        image = feeds["sample"].astype(np.float32)
        pooled = image.reshape(*image.shape[:2], image.shape[2] // factor, factor, image.shape[3] // factor, factor)
        means = pooled.mean(axis=(3, 5))
        latents = np.concatenate([means, means[:, :1]], axis=1)
        return {"latent_parameters": np.concatenate([latents, np.zeros_like(latents)], axis=1)}

    return {"text_encoder": text_encoder, "unet": unet, "vae_decoder": vae_decoder, "vae_encoder": vae_encoder}


def write_package(
    root: Path, constants: PipelineConstants = TINY, family: str = "sd1", scheduler_config: str = "tiny"
) -> Path:
    """A package folder with everything but ONNX files: manifest, the real CLIP tokenizer, a scheduler config."""
    from diffship.exporter.vocab import write_clip_tokenizer  # stdlib + the committed merge list; no torch

    root.mkdir(parents=True, exist_ok=True)
    tokenizer_config = json.loads((CONFIGS / "tiny" / "tokenizer_config.json").read_text(encoding="utf-8"))
    write_clip_tokenizer(root / "tokenizer", {**tokenizer_config, "pad_token": constants.text_encoders[0].pad_token})
    (root / "scheduler").mkdir(exist_ok=True)
    shutil.copyfile(CONFIGS / scheduler_config / "scheduler_config.json", root / "scheduler" / "scheduler_config.json")
    description = get_family(family)
    components = {
        name: {dtype: ComponentVariant(name, dtype, f"onnx/{name}/model.onnx", (), spec.with_float_dtype(numpy))}
        for name, spec in description.specs(constants).items()
        for dtype, numpy in (("fp32", "float32"),)
    }
    manifest = Manifest(family=family, source={"kind": "fake"}, constants=constants, export={"key": "fake"},
                        components=components, files={})
    listed = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"]
    ModelPackage(root, manifest).write_manifest(manifest.with_files(root, listed))
    return root


@dataclass(frozen=True)
class NumpyOptions(BackendOptions):
    """``NumpyBackend``'s options: none; numpy runs where the test does."""


class NumpyBackend:
    """A backend over numpy functions, plugged in with ``register_backend("numpy", NumpyBackend)``."""

    name = "numpy"

    def options(self, settings: OpenSettings) -> NumpyOptions:
        refuse_settings(self.name, settings, ("auto", "cpu"), "numpy functions run in the calling thread, on the CPU")
        return own_options(self.name, NumpyOptions, settings.options) or NumpyOptions()

    def __init__(self, profiles: Mapping[str, ShapeProfile] | None = None, functions: Mapping[str, Function] | None = None) -> None:
        self.profiles = dict(profiles or {})
        self.functions = functions
        self.opened: list[FakeEngine] = []

    def select(self, package: ModelPackage, request: OpenRequest) -> Selection:
        own_options(self.name, NumpyOptions, request.options)
        return Selection(self.name, request.precision or "fp32")

    def open(
        self, package: ModelPackage, selection: Selection, components: Sequence[str], request: OpenRequest
    ) -> dict[str, EngineBase]:
        functions = self.functions or toy_functions(package.constants)
        engines: dict[str, EngineBase] = {}
        for component in components:
            engine = FakeEngine(package.variant(component, selection.precision).spec, functions[component],
                                self.profiles.get(component))
            self.opened.append(engine)
            engines[component] = engine
        return engines


def with_profile(spec: ComponentSpec, batch: tuple[int, int], size: tuple[int, int] = (8, 8)) -> ShapeProfile:
    """A profile for ``spec`` accepting batches ``batch[0]..batch[1]`` at latent size ``size``."""
    dims = {"latent_height": size[0], "latent_width": size[1], "image_height": size[0] * 8, "image_width": size[1] * 8,
            "text_length": 77}
    low, high = ({**dims, "batch": batch[0]}, {**dims, "batch": batch[1]})
    return ShapeProfile(spec.name, {t.name: (t.resolve(low), t.resolve(low), t.resolve(high)) for t in spec.inputs})
