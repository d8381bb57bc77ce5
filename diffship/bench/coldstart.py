"""Cold start in fresh processes: import time, process start to first image, and peak resident memory.

    python -m diffship.bench.coldstart runtime --package DIR --height H --width W [--backend ort] [--threads N] [--device cpu]
    python -m diffship.bench.coldstart diffusers --pretrained DIR --height H --width W [--device cpu]

Each prints one JSON line; ``measure_cold_start`` runs both and adds the wall time from launching the process to
the first image. After the first image each child makes the same image again, as a measure of the image's own
compute: what the first call took beyond it (first-call allocation, weights paged in, kernels chosen) is start-up
cost, and ``start_stages`` splits process start -> first image into interpreter, import, open, first-call warm-up and
the image itself. The runtime also reports each component's first and second call. Memory is read after the first
image. diffusers loads a ``save_pretrained`` copy of the package's very weights (safetensors), the way a diffusers
service starts; the copy is made once and kept in the cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffship.bench.processes import absolute, run_module
from diffship.bench.settings import BackendChoice, BenchSettings
from diffship.core.files import publish_folder, work_folder
from diffship.core.integrity import VERIFY_ENV, cache_dir
from diffship.runtime.timing import peak_rss_bytes

if TYPE_CHECKING:
    from diffship.core.package import ModelPackage

PROMPT = "a photograph of an astronaut riding a horse"
ChildFigures = dict[str, Any]
"""What one child reports (its JSON line), with ``first_image_s`` and ``stages`` added by the parent."""


def pretrained_copy(package: ModelPackage) -> Path:
    """A diffusers folder with the package's weights (made once, atomically), by its absolute path."""
    from diffship.bench.reference import reference_pipeline

    digest = package.manifest.source.get("weights_sha256", "unknown")[:16]
    folder = Path(absolute(cache_dir())) / f"reference-{digest}"
    if (folder / "model_index.json").is_file():
        return folder
    with work_folder(folder.parent, folder.name) as staging:
        reference = reference_pipeline(package)
        reference.pipe.save_pretrained(staging)
        # Keep the package's own scheduler file: save_pretrained spells out every default, which changes swaps.
        shutil.copyfile(package.path("scheduler/scheduler_config.json"), staging / "scheduler" / "scheduler_config.json")
        publish_folder(staging, folder)
    return folder


def measure_cold_start(
    settings: BenchSettings, package: ModelPackage, progress: Callable[[str], None],
    record: Callable[[str, ChildFigures], None] = lambda label, figures: None,
) -> dict[str, ChildFigures]:
    """Each contender's cold start in a fresh process, by label (``diffusers``, ``diffship ort``, ...); ``record``
    gets each one's figures as soon as they are in (a later child that fails then loses nothing measured)."""
    common = ["--height", str(settings.height), "--width", str(settings.width), "--device", settings.device]
    if settings.threads:
        common += ["--threads", str(settings.threads)]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "diffusers": (["diffusers", "--pretrained", str(pretrained_copy(package)), *common], {})}
    for backend in settings.backends:
        arguments = ["runtime", "--package", absolute(settings.package), *BackendChoice.parse(backend).child_arguments(),
                     *common]
        commands[f"diffship {backend}"] = (arguments, {})
        # The very first start also hashes every file against the manifest (later starts trust the record).
        commands[f"diffship {backend}, first start"] = (arguments, {VERIFY_ENV: "always"})
    results = {}
    for label, (arguments, environment) in commands.items():
        progress(f"cold start: {label}")
        launched = time.time()
        completed = run_module("diffship.bench.coldstart", arguments, environment, timeout_s=3600)
        if completed.returncode != 0:
            raise RuntimeError(f"cold-start run for {label} failed:\n{completed.stderr[-2000:]}")
        data = json.loads(completed.stdout.strip().splitlines()[-1])
        data["first_image_s"] = data.pop("finished_wall") - launched
        data["stages"] = start_stages(data)
        results[label] = data
        record(label, data)
    return results


def start_stages(child: ChildFigures) -> dict[str, float]:
    """Process start -> first image in five parts: the interpreter's own start (launch to the child's first line, with
    this module's standard-library imports), imports, opening the pipeline, the first call's warm-up (its time beyond
    the same call made again) and the image's own compute. The compute is the faster of the two calls: when the
    second call is the slower (run-to-run noise), warm-up is 0 and start-up is not understated."""
    compute = min(child["again_s"], child["generate_s"])
    return {
        "interpreter_s": child["first_image_s"] - child["import_s"] - child["load_s"] - child["generate_s"],
        "import_s": child["import_s"],
        "open_s": child["load_s"],
        "warm_up_s": child["generate_s"] - compute,
        "image_s": compute,
    }


def _child(arguments: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    if arguments.mode == "runtime":
        import onnxruntime  # noqa: F401  (part of what a runtime service imports)

        from diffship.runtime import Pipeline
        from diffship.runtime.pipeline import Pipeline as _loaded  # noqa: F401  (force the lazy import now)

        imported = time.perf_counter()
        choice = BackendChoice(arguments.backend, arguments.precision, arguments.cuda_graphs, not arguments.exported)
        pipe = Pipeline.from_package(arguments.package, **choice.open_arguments(arguments.device, arguments.threads))
        loaded = time.perf_counter()
        first = pipe(PROMPT, num_inference_steps=1, height=arguments.height, width=arguments.width, seed=0)
        finished = time.perf_counter()
        memory = _memory_now(arguments.device)
        again = pipe(PROMPT, num_inference_steps=1, height=arguments.height, width=arguments.width, seed=0)
        components = {stage: {"first_s": first.timings.stage_seconds()[stage], "again_s": seconds}
                      for stage, seconds in again.timings.stage_seconds().items()}
    else:
        import torch
        from diffusers import DiffusionPipeline

        imported = time.perf_counter()
        if arguments.threads:
            torch.set_num_threads(arguments.threads)
        cuda = arguments.device in ("cuda", "auto") and torch.cuda.is_available()
        # The folder's own pipeline class (StableDiffusionPipeline, StableDiffusionXLPipeline); SD's without a
        # safety checker, as the runtime has none.
        index = json.loads((Path(arguments.pretrained) / "model_index.json").read_text(encoding="utf-8"))
        extra = {"safety_checker": None} if "safety_checker" in index else {}
        pipe = DiffusionPipeline.from_pretrained(
            arguments.pretrained, torch_dtype=torch.float16 if cuda else torch.float32, **extra
        ).to("cuda" if cuda else "cpu")
        pipe.set_progress_bar_config(disable=True)
        loaded = time.perf_counter()

        def generate() -> None:
            with torch.inference_mode():
                pipe(PROMPT, num_inference_steps=1, height=arguments.height, width=arguments.width, output_type="np")
            if cuda:
                torch.cuda.synchronize()

        generate()
        finished = time.perf_counter()
        memory = _memory_now(arguments.device)
        generate()
        components = {}
    finished_wall = time.time() - (time.perf_counter() - finished)
    return {
        "import_s": imported - start,
        "load_s": loaded - imported,
        "generate_s": finished - loaded,
        "again_s": time.perf_counter() - finished,
        "components": components,
        **memory,
        "finished_wall": finished_wall,
    }


def _memory_now(device: str) -> dict[str, int | None]:
    """Peak resident memory so far and device memory held, read after the first image (the second call is only a
    timing reference)."""
    return {"peak_rss_bytes": peak_rss_bytes(),
            "gpu_memory_bytes": _gpu_memory_of_this_process() if device != "cpu" else None}


def _gpu_memory_of_this_process() -> int | None:
    """Device memory this process holds now (after its first image), as nvidia-smi reports it; None without one."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in listed.stdout.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()) and used.strip().isdigit():
            return int(used.strip()) * 2**20
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["runtime", "diffusers"])
    parser.add_argument("--package")
    parser.add_argument("--pretrained")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--precision")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true")
    parser.add_argument("--exported", action="store_true", help="the exported ONNX, not build-ort engines")
    print(json.dumps(_child(parser.parse_args())))


if __name__ == "__main__":
    main()
