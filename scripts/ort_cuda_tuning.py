"""CUDA provider settings per component, measured: plain vs CUDA graph, NHWC convolutions, cuDNN algorithm search.

    python scripts/ort_cuda_tuning.py --package packages/sd15-random --precision fp16 --json tuning.json

Opens each component's engine (the package's ``build-ort --target cuda`` set when there is one) once per setting,
runs it twice to warm up (cuDNN's algorithm search, CUDA graph capture), then times ``--repeats`` calls and prints
median and min per setting, and the largest difference of its output from the plain engine's. "plain" is ONNX
Runtime's own defaults; "diffship-defaults" is what the runtime opens (engines/ort/engine.py, CUDA_DEFAULTS). Needs onnxruntime-gpu
and an NVIDIA GPU. The figures in BENCHMARKS.md ("GPU") were measured with this loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffship.core.manifest import OrtEngineEntry  # noqa: E402
from diffship.core.package import ModelPackage  # noqa: E402
from diffship.core.specs import symbolic_dims  # noqa: E402
from diffship.engines.ort import OrtEngine, OrtOptions  # noqa: E402

ORT_DEFAULTS = {"prefer_nhwc": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
"""ONNX Runtime's own defaults, named so that the engine's per-component CUDA_DEFAULTS do not apply."""
SETTINGS = {
    "plain": (ORT_DEFAULTS, False),
    "graph": (ORT_DEFAULTS, True),
    "nhwc": ({**ORT_DEFAULTS, "prefer_nhwc": "1"}, False),
    "heuristic": ({**ORT_DEFAULTS, "cudnn_conv_algo_search": "HEURISTIC"}, False),
    "nhwc+graph": ({**ORT_DEFAULTS, "prefer_nhwc": "1"}, True),
    "heuristic+graph": ({**ORT_DEFAULTS, "cudnn_conv_algo_search": "HEURISTIC"}, True),
    "nhwc+heuristic+graph": ({"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"}, True),
    "diffship-defaults": ({}, False),
    "diffship-defaults+graph": ({}, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, type=Path)
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    parser.add_argument("--size", type=int, default=512, help="image height and width in pixels")
    parser.add_argument("--components", default="unet,vae_decoder,vae_encoder")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()

    package = ModelPackage.open(arguments.package)
    constants = package.constants
    engine_set = package.manifest.engines.get(f"ort-cuda-{arguments.precision}")
    rng = np.random.default_rng(0)
    results = []
    for component in arguments.components.split(","):
        spec = package.variant(component, arguments.precision).spec
        entry = engine_set.components.get(component) if engine_set else None
        path = package.path(entry.graph if isinstance(entry, OrtEngineEntry) else
                            package.variant(component, arguments.precision).onnx)
        batch = 2 if component == "unet" else 1  # the UNet runs the guided batch
        dims = symbolic_dims(batch, arguments.size, arguments.size, constants.vae_scale_factor)
        feeds = {t.name: (np.full(t.resolve(dims), 500) if t.name == "timestep" else rng.standard_normal(t.resolve(dims)))
                 .astype(t.dtype) for t in spec.inputs}
        reference = None
        for name, (provider_options, graph) in SETTINGS.items():
            engine = OrtEngine(path, spec, OrtOptions(device="cuda", cuda_graph=graph,
                                                      cuda_provider_options=provider_options))
            output = engine(feeds)[spec.outputs[0].name].astype(np.float32)
            engine(feeds)
            times = []
            for _ in range(arguments.repeats):
                start = time.perf_counter()
                engine(feeds)
                times.append(time.perf_counter() - start)
            engine.close()
            reference = output if reference is None else reference
            row = {"component": component, "setting": name, "median_ms": 1000 * statistics.median(times),
                   "min_ms": 1000 * min(times), "max_abs_diff_vs_plain": float(np.abs(output - reference).max())}
            results.append(row)
            print(f"{component:12s} {name:22s} median {row['median_ms']:7.2f} ms  min {row['min_ms']:7.2f} ms  "
                  f"diff vs plain {row['max_abs_diff_vs_plain']:.3g}", flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
