#!/usr/bin/env bash
# The GPU record in BENCHMARKS.md, in one command: the gpu-marked tests, build-ort --target cuda, parity on ONNX
# Runtime's CUDA provider and the interleaved benchmark against diffusers fp16, on the full-size SD 1.5 architecture
# with random weights (no model hub needed).
#
#   scripts/gpu_checks.sh OUT_DIR [PACKAGES_DIR]
#
# Needs an NVIDIA GPU, onnxruntime-gpu, torch with CUDA and diffusers. Every step runs even when an earlier one failed;
# OUT_DIR/steps.log lists each step's exit status and time, OUT_DIR/<step>.log holds what it printed.
# MODEL=tiny and DEVICE=cpu make a quick dry run of the same steps on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR [PACKAGES_DIR]}
packages=${2:-packages}
py=${PYTHON:-python3}
model=${MODEL:-sd15}
device=${DEVICE:-cuda}
size=${SIZE:-512}
mkdir -p "$out" "$packages"
out=$(cd "$out" && pwd)
package="$packages/$model-random"
random=(--random-weights)
[ "$model" = tiny ] && { package="$packages/tiny"; random=(); }
graphs=-graphs
[ "$device" = cpu ] && graphs=
backends="ort-fp16,ort-fp16-exported,ort-fp32"
[ -n "$graphs" ] && backends="ort-fp16,ort-fp16-graphs,ort-fp16-exported,ort-fp32"

step() {
    local name=$1 started rc
    shift
    echo "== $name: $*" >>"$out/steps.log"
    started=$(date +%s)
    "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - started)) s" >>"$out/steps.log"
    return $rc
}

step environment bash -c "nvidia-smi; $py -c 'import onnxruntime as o, torch, diffusers, transformers, numpy;
print(\"onnxruntime\", o.__version__, o.get_available_providers()); print(\"torch\", torch.__version__, torch.version.cuda);
print(\"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__, \"numpy\", numpy.__version__)'"

# The full-size export takes minutes on the CPU: run it beside the tests. The legacy exporter is the fallback.
(step export "$py" cli.py export --model "$model" "${random[@]}" --dtype fp32,fp16 --out "$package" ||
    step export-legacy "$py" cli.py export --model "$model" "${random[@]}" --dtype fp32,fp16 --exporter legacy \
        --out "$package") &
exporting=$!
if [ "$device" != cpu ]; then
    step pytest-gpu "$py" -m pytest -m gpu -rs -s -p no:cacheprovider --continue-on-collection-errors \
        --junitxml="$out/pytest-gpu.xml"
fi
wait $exporting

for precision in fp16 fp32; do
    step "build-ort-$device-$precision" "$py" cli.py build-ort --package "$package" --precision "$precision" \
        --target "$device"
done
step "bench-$size" "$py" cli.py bench --package "$package" --device "$device" --size "$size" --steps 1,4,20,50 \
    --repeats 5 --backends "$backends" --no-cold-start \
    --json "$out/bench-$size/bench.json"
[ "$device" != cpu ] && step component-tuning "$py" scripts/ort_cuda_tuning.py --package "$package" --size "$size" \
    --json "$out/component-tuning.json"
for precision in fp16 fp32; do
    step "parity-$precision" "$py" cli.py parity --package "$package" --device "$device" --precision "$precision" \
        --reference-device "$device" --schedulers euler_a,dpmpp_2m --guidance 7.5 --steps 20 --size "$size" \
        --out "$out/parity-$precision"
done
[ -n "$graphs" ] && step parity-fp16-graphs "$py" cli.py parity --package "$package" --device "$device" \
    --precision fp16 --cuda-graphs --reference-device "$device" --schedulers euler_a --guidance 7.5 --steps 20 \
    --size "$size" --out "$out/parity-fp16-graphs"
step cold-start "$py" cli.py bench --package "$package" --device "$device" --size "$size" --steps 1 --repeats 1 \
    --backends "ort-fp16${graphs:+,ort-fp16$graphs}" --json "$out/cold-start/bench.json"
echo "== done" >>"$out/steps.log"
