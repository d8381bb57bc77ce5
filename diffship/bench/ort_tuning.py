"""Measure ONNX Runtime session settings for the UNet on this CPU, against torch, each in a fresh process.

    python -m diffship.bench.ort_tuning --package packages/sd15-random --latent 32,64 --repeats 3 --json tuning.json

For every variant (session options, or a graph rewritten by ONNX Runtime's transformer optimizer) a subprocess loads
the UNet, runs one warm-up and ``--repeats`` timed batch-2 calls per latent size, and reports the median call time,
the session load time and the process's peak resident memory. ``torch`` is diffusers' UNet on the same weights and
inputs. A benchmark: it prints a table and writes JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from diffship.bench.processes import absolute, run_module
from diffship.core.errors import command

VARIANTS: dict[str, dict[str, Any]] = {
    "ort default": {},
    "ort basic graph optimisations": {"graph_optimization": "basic"},
    "ort extended graph optimisations": {"graph_optimization": "extended"},
    "ort no memory arena": {"memory_arena": False},
    "ort no prepacking": {"session_config": {"session.disable_prepacking": "1"}},
    "ort no arena, no prepacking": {"memory_arena": False, "session_config": {"session.disable_prepacking": "1"}},
    "ort transformer optimizer (fuses LayerNorm only here)": {"fused": True},
    "ort build-ort engine (MultiHeadAttention, pre-optimised)": {"prebuilt": True},
    "ort build-ort engine, no prepacking": {"prebuilt": True, "session_config": {"session.disable_prepacking": "1"}},
    "torch (diffusers UNet)": {"torch": True},
}


def fused_unet_path(package_root: Path) -> Path:
    """The UNet after ONNX Runtime's transformer optimizer (attention fused for the CPU provider), made once."""
    from diffship.core.integrity import cache_dir
    from diffship.core.package import ModelPackage

    package = ModelPackage.open(package_root)
    variant = package.variant("unet", "fp32")
    digest = package.manifest.files[variant.onnx].sha256[:16]
    target = cache_dir() / f"unet-fused-{digest}" / "model.onnx"
    if target.is_file():
        return target
    from onnxruntime.transformers import fusion_attention_unet
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    _patch_num_heads(fusion_attention_unet.FusionAttentionUnet)

    options = FusionOptions("unet")
    # These rewrite into operators only the CUDA provider has (NhwcConv, GroupNorm, BiasSplitGelu, ...).
    for flag in ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
                 "enable_packed_qkv", "enable_packed_kv", "enable_bias_add", "enable_bias_skip_layer_norm",
                 "enable_qordered_matmul"):
        if hasattr(options, flag):
            setattr(options, flag, False)
    model = optimize_model(str(package.path(variant.onnx)), model_type="unet", opt_level=0, use_gpu=False,
                           optimization_options=options, num_heads=0, hidden_size=0)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save_model_to_file(str(target), use_external_data_format=True, all_tensors_to_one_file=True)
    return target


def _patch_num_heads(fusion_class: Any) -> None:
    """onnxruntime 1.31's get_num_heads calls int() on a shape-[1] array, which NumPy 2.4 refuses; take .item()."""
    original = fusion_class.get_num_heads

    def get_num_heads(self: Any, reshape_q: Any, is_torch2: bool = False) -> int:
        if is_torch2:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1 and int(value.reshape(-1)[0]) > 0:
                    return int(value.reshape(-1)[0])
        return int(original(self, reshape_q, is_torch2))

    fusion_class.get_num_heads = get_num_heads


def _child(arguments: argparse.Namespace) -> dict[str, Any]:
    from diffship.runtime.timing import peak_rss_bytes

    settings = VARIANTS[arguments.variant]
    latents = [int(x) for x in arguments.latent.split(",")]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    if settings.get("torch"):
        import torch

        from diffship.bench.reference import reference_pipeline
        from diffship.core.package import ModelPackage

        if arguments.threads:
            torch.set_num_threads(arguments.threads)
        unet = reference_pipeline(ModelPackage.open(arguments.package)).pipe.unet

        def call(sample: np.ndarray, timestep: np.ndarray, hidden: np.ndarray) -> None:
            with torch.inference_mode():
                unet(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(hidden))
    else:
        from diffship.core.package import ModelPackage
        from diffship.engines.backend import OpenRequest, open_engines
        from diffship.engines.ort import OrtEngine, OrtOptions

        package = ModelPackage.open(arguments.package)
        variant = package.variant("unet", "fp32")
        if settings.get("prebuilt"):
            options = OrtOptions(threads=arguments.threads, device="cpu",
                                 **{k: v for k, v in settings.items() if k != "prebuilt"})
            engine = open_engines(package, ["unet"], "ort", OpenRequest(precision="fp32", options=options))[0]["unet"]
            if "engines/" not in str(getattr(engine, "path", "engines/")):
                raise SystemExit(f"no build-ort engine in this package: run `{command('build-ort')}` first")
        else:
            path = fused_unet_path(Path(arguments.package)) if settings.get("fused") else package.path(variant.onnx)
            options = OrtOptions(threads=arguments.threads, prebuilt=False,
                                 **{k: v for k, v in settings.items() if k != "fused"})
            engine = OrtEngine(path, variant.spec, options)

        def call(sample: np.ndarray, timestep: np.ndarray, hidden: np.ndarray) -> None:
            engine({"sample": sample, "timestep": timestep, "encoder_hidden_states": hidden})

    loaded = time.perf_counter() - started
    hidden_size = 768
    try:
        from diffship.core.package import ModelPackage

        hidden_size = ModelPackage.open(arguments.package).constants.unet_text_size
    except Exception:  # pragma: no cover - only for packages without constants
        pass
    results = {}
    for size in latents:
        sample = rng.standard_normal((2, 4, size, size)).astype(np.float32)
        timestep = np.full((2,), 500.0, np.float32)
        hidden = rng.standard_normal((2, 77, hidden_size)).astype(np.float32)
        call(sample, timestep, hidden)  # warm-up
        times = []
        for _ in range(arguments.repeats):
            tick = time.perf_counter()
            call(sample, timestep, hidden)
            times.append(time.perf_counter() - tick)
        results[str(size)] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    return {"variant": arguments.variant, "load_s": loaded, "calls": results, "peak_rss_bytes": peak_rss_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True)
    parser.add_argument("--latent", default="32,64", help="latent sizes (64 = 512x512 images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--variants", default="all", help="'all' or names separated by ';'")
    parser.add_argument("--json", type=Path, default=Path("bench-out/ort_tuning.json"))
    parser.add_argument("--child", dest="variant", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.variant:
        print(json.dumps(_child(arguments)))
        return
    from diffship.bench.machine import describe_machine
    from diffship.runtime.tables import format_table

    names = list(VARIANTS) if arguments.variants == "all" else arguments.variants.split(";")
    rows, results = [], []
    for name in names:
        command = ["--package", absolute(arguments.package), "--latent", arguments.latent, "--repeats",
                   str(arguments.repeats), "--child", name]
        if arguments.threads:
            command += ["--threads", str(arguments.threads)]
        print(f"running: {name}", file=sys.stderr, flush=True)
        completed = run_module("diffship.bench.ort_tuning", command)
        if completed.returncode != 0:
            print(f"  failed: {completed.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            results.append({"variant": name, "error": completed.stderr[-2000:]})
            continue
        data = json.loads(completed.stdout.strip().splitlines()[-1])
        results.append(data)
        rows.append([name, f"{data['load_s']:.1f}",
                     *(f"{data['calls'][s]['median_s']:.2f}" for s in arguments.latent.split(",")),
                     f"{data['peak_rss_bytes'] / 2**30:.2f}"])
    print(format_table(["variant", "load s", *(f"UNet b2 {s}x{s} s" for s in arguments.latent.split(",")),
                        "peak RSS GiB"], rows))
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps({"machine": describe_machine(), "package": arguments.package,
                                          "repeats": arguments.repeats, "results": results}, indent=2) + "\n")
    print(f"wrote {arguments.json}")


if __name__ == "__main__":
    main()
