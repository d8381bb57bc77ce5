"""``export --cache-branch N``: the two DeepCache graphs (exporter/deepcache.py) exported next to a package's UNet,
verified against torch in ONNX Runtime, and added to its manifest.

Each graph is exported and verified in a hidden work folder inside the package, then moved into ``onnx/<component>``
and only then listed in the manifest (under the package's lock): a crash leaves at most unlisted files, never a
component a later run would take for complete. In every precision the package's UNet has; ONNX Runtime only: TensorRT builds and LoRA weight maps for
these graphs are not done yet (a call with LoRAs and ``cache_interval`` is refused).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from diffship.core.errors import DiffshipError
from diffship.core.files import work_folder
from diffship.core.manifest import NUMPY_FLOAT, ComponentVariant, Manifest
from diffship.core.metrics import random_feeds, verification_dims
from diffship.core.package import ModelPackage
from diffship.core.specs import ComponentSpec, dim_multiples, symbolic_dims
from diffship.exporter.deepcache import (
    FULL,
    SHALLOW,
    Branch,
    CachedUNet,
    CacheFullBoundary,
    CacheShallowBoundary,
    cache_dims,
    cache_specs,
    feature_channels,
)
from diffship.exporter.families import family_exporter
from diffship.exporter.onnx_export import DEFAULT_OPSET, ExportOptions, export_component
from diffship.exporter.package import onnx_file_name
from diffship.exporter.sources import load_source_from_info
from diffship.exporter.verify import check_onnx, verify_component

log = logging.getLogger(__name__)


class CacheExportError(DiffshipError):
    """The DeepCache graphs cannot be exported for this package; the message says why."""


def add_cache_graphs(root: Path, branch_id: int, opset: int = DEFAULT_OPSET,
                     progress: Callable[[str], None] = log.info) -> ModelPackage:
    """Export the full and shallow graphs at ``branch_id`` into the package at ``root`` (replacing any there)."""
    package = ModelPackage.open(root)
    dtypes = tuple(package.manifest.components.get("unet", {}))
    progress(f"loading the source of {root} for the DeepCache graphs")
    source = load_source_from_info(dict(package.manifest.source))
    try:
        try:
            branch = Branch.from_id(branch_id, source.unet.config)
        except ValueError as exc:
            raise CacheExportError(str(exc)) from None
        unet = family_exporter(source.family).boundary_module("unet", source).unet  # type: ignore[union-attr]
        cached = CachedUNet(unet, branch).eval()
        specs = cache_specs(package.variant("unet", dtypes[0]).spec.with_float_dtype("float32"),
                            feature_channels(unet, branch), cached.shallow_reads_text())
        modules = {FULL: CacheFullBoundary(cached).eval(), SHALLOW: CacheShallowBoundary(cached).eval()}
        with work_folder(Path(root), "cache-graphs") as staging:
            # Every precision the UNet has, so that the package's precisions (ModelPackage.dtypes) stay as they were.
            variants = {name: {dtype: _export(package, modules[name], specs[name], dtype, branch, staging, opset,
                                              progress) for dtype in dtypes} for name in (FULL, SHALLOW)}
            _publish(package, staging, variants, branch_id)
    finally:
        source.close()
    progress(f"DeepCache graphs at branch {branch_id} (block {branch.block}, layer {branch.layer}) added to {root}")
    return ModelPackage.open(root)


def has_cache_graphs(root: Path, branch_id: int) -> bool:
    """Whether the package at ``root`` holds both graphs at ``branch_id`` for every precision of its UNet."""
    manifest = ModelPackage.open(root).manifest
    dtypes = set(manifest.components.get("unet", {}))
    return manifest.export.get("cache_branch") == branch_id and all(
        set(manifest.components.get(name, {})) >= dtypes for name in (FULL, SHALLOW))


def _export(package: ModelPackage, reference: torch.nn.Module, fp32_spec: ComponentSpec, dtype: str, branch: Branch,
            staging: Path, opset: int, progress: Callable[[str], None]) -> ComponentVariant:
    constants = package.constants
    spec = fp32_spec.with_float_dtype(NUMPY_FLOAT[dtype])
    module = reference if dtype == "fp32" else copy.deepcopy(reference).half()
    factor = constants.vae_scale_factor
    # As the package's own export: batch 2 and odd latent sizes, so no dimension is traced at a special value.
    example_dims = cache_dims(symbolic_dims(2, 9 * factor, 13 * factor, factor, 2 * constants.text_max_length), branch)
    feeds = random_feeds(spec, example_dims, np.random.default_rng(0), 2)
    example = tuple(torch.from_numpy(feeds[t.name]) for t in fp32_spec.inputs)
    example = tuple(x.half() if dtype == "fp16" and t.name != "timestep" else x
                    for t, x in zip(fp32_spec.inputs, example, strict=True))
    label = f"{spec.name} {dtype}"
    progress(f"{label}: exporting (legacy tracer, opset {opset})")
    # The legacy tracer: torch.export cannot be told that the feature's size is the latent size halved, rounded up.
    files = export_component(module, spec, example, staging / "onnx" / spec.name,
                             ExportOptions(exporter="legacy", opset=opset), dim_multiples(constants),
                             file_name=onnx_file_name(dtype))
    del module
    check_onnx(files[0])
    cases = [cache_dims(dims, branch) for dims in verification_dims(constants)]
    verification = verify_component(files[0], reference, fp32_spec, dtype, cases, 2)
    progress(f"{label}: {'verified' if verification.passed else 'FAILED'}: {verification.describe()}")
    if not verification.passed:
        raise CacheExportError(f"{label} misses the parity bar ({verification.bar}): "
                               + "; ".join(verification.failures))
    relative = [f"onnx/{spec.name}/{f.name}" for f in files]
    return ComponentVariant(component=spec.name, dtype=dtype, onnx=relative[0], files=tuple(relative), spec=spec,
                            verification=verification.to_json())


def _publish(package: ModelPackage, staging: Path, variants: dict[str, dict[str, ComponentVariant]],
             branch_id: int) -> None:
    """Move the verified graphs into place, then list them (module docstring)."""
    for name in variants:
        target = package.root / "onnx" / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / "onnx" / name, target)
    files = [f for by_dtype in variants.values() for variant in by_dtype.values() for f in variant.files]

    def change(manifest: Manifest) -> Manifest:
        components = {**manifest.components, **variants}
        export = {**manifest.export, "cache_branch": branch_id}
        return replace(manifest, components=components, export=export).with_files(package.root, files)

    package.update_manifest(change)
