"""The tiny model packages the tests share: exported once into a cache folder, each under a file lock, so that a
second process can export them while the first runs the tests that need none (``python -m tests.packages DIR``, which
``tests/conftest.py`` starts at the beginning of a session; docs/design.md, "Tests").

A package whose lock is free and whose export is up to date costs only the exporter's up-to-date check.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def locked(cache_dir: Path, name: str) -> Iterator[None]:
    """Hold ``name``'s lock in ``cache_dir`` (released when the holder exits, however it exits)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def export(cache_dir: Path, model: str | None, name: str, dtypes: tuple[str, ...], exporter: str = "dynamo",
           model_path: Path | None = None) -> Path:
    from diffship.exporter.onnx_export import ExportOptions
    from diffship.exporter.package import ExportRequest, export_package

    out = cache_dir / name
    with locked(cache_dir, name):
        export_package(ExportRequest(out=out, model=model, model_path=model_path, dtypes=dtypes,
                                     options=ExportOptions(exporter=exporter)))
    return out


def save_pretrained(cache_dir: Path, model: str) -> Path:
    """The model's diffusers folder (``save_pretrained``), written once into the cache."""
    from diffship.exporter.sources import load_source

    folder = cache_dir / f"{model}-diffusers"
    with locked(cache_dir, f"{model}-diffusers"):
        if not (folder / "model_index.json").is_file():
            source = load_source(model)
            staging = cache_dir / f".{model}-diffusers.partial"
            shutil.rmtree(staging, ignore_errors=True)
            task = "img2img" if source.family == "sdxl-refiner" else "txt2img"  # the refiner's only pipeline
            source.diffusers_pipeline(task).save_pretrained(staging)
            # save_pretrained writes every scheduler default explicitly (timestep_spacing "leading", ...), which
            # changes what a swapped-in scheduler inherits. Keep the source's own file, as a hub folder has it and
            # as the package holds it.
            shutil.copyfile(source.scheduler_config_path, staging / "scheduler" / "scheduler_config.json")
            source.close()
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
    return folder


def tiny(cache_dir: Path) -> Path:
    """SD 1.x tiny model, fp32 and fp16 ONNX (dynamo exporter)."""
    return export(cache_dir, "tiny", "tiny", ("fp32", "fp16"))


def tiny_legacy(cache_dir: Path) -> Path:
    """SD 1.x tiny model, fp32 ONNX, exactly as ``ExportRequest(model="tiny", options=ExportOptions(exporter="legacy"))``
    writes it: the starting point the re-export tests copy instead of each exporting it again."""
    return export(cache_dir, "tiny", "tiny-legacy", ("fp32",), exporter="legacy")


def tiny_v(cache_dir: Path) -> Path:
    """SD 2.x (v-prediction) tiny model, fp32 ONNX (legacy exporter: 10 s where dynamo fp32+fp16 takes two minutes of
    CI; the dynamo exporter and fp16 are covered by ``tiny``, and the legacy exporter cannot write fp16 text encoders)."""
    return export(cache_dir, "tiny-v", "tiny-v", ("fp32",), exporter="legacy")


def tiny_inpaint(cache_dir: Path) -> Path:
    """SD 1.x tiny inpainting model (9-channel UNet), fp32 ONNX (legacy exporter: seconds where dynamo takes minutes;
    both are verified against torch at export, odd latent sizes included)."""
    return export(cache_dir, "tiny-inpaint", "tiny-inpaint", ("fp32",), exporter="legacy")


def shapes(cache_dir: Path) -> Path:
    """The trained shapes model (diffship/models/shapes), fp32 ONNX (legacy exporter, for CI time as with tiny-v)."""
    return export(cache_dir, "shapes", "shapes", ("fp32",), exporter="legacy")


def tiny_xl(cache_dir: Path) -> Path:
    """SDXL tiny model, fp32 ONNX, exported from its diffusers folder as ``--model-path`` does (legacy exporter, for
    CI time: seconds; every component is verified against torch at export)."""
    return export(cache_dir, None, "tiny-xl", ("fp32",), exporter="legacy", model_path=save_pretrained(cache_dir, "tiny-xl"))


def tiny_xl_refiner(cache_dir: Path) -> Path:
    """SDXL refiner tiny model, fp32 ONNX, from its StableDiffusionXLImg2ImgPipeline folder (legacy exporter)."""
    return export(cache_dir, None, "tiny-xl-refiner", ("fp32",), exporter="legacy",
                  model_path=save_pretrained(cache_dir, "tiny-xl-refiner"))


def pretrained(cache_dir: Path) -> dict[str, Path]:
    return {model: save_pretrained(cache_dir, model) for model in ("tiny", "tiny-v")}


MAKERS = {"tiny_package": tiny, "pretrained_dirs": pretrained, "tiny_v_package": tiny_v,
          "tiny_inpaint_package": tiny_inpaint, "shapes_package": shapes, "tiny_xl_package": tiny_xl,
          "tiny_xl_refiner_package": tiny_xl_refiner, "tiny_legacy_package": tiny_legacy}
"""The fixture that needs each package -> what makes it, the slowest first (the prefetch order)."""


def prefetch(cache_dir: Path, fixtures: list[str]) -> None:
    """The packages of ``fixtures``, in ``MAKERS`` order (a test that needs one waits on its lock, or makes it)."""
    for fixture, make in MAKERS.items():
        if fixture in fixtures:
            log.info("prefetch: %s", fixture)
            make(cache_dir)


if __name__ == "__main__":
    import torch

    # One core for this process, the other for the tests running beside it.
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    prefetch(Path(sys.argv[1]), sys.argv[2:])
