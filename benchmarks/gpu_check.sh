#!/usr/bin/env bash
# The GPU path on a CUDA machine in one run, for a card that is only lent for minutes:
#   1. the card (name, memory, driver, torch, bf16);
#   2. tests/test_gpu.py: nvJPEG against Pillow, bf16 + channels-last against CPU fp32, `zoo index`
#      on the GPU, a bf16 fit whose checkpoint the CPU embeds with, DDP over NCCL;
#   3. zoo's main job, `zoo benchmark` on the built-in demo set, timed;
#   4. benchmarks/embed_throughput.py: images per second per inference path, the loader alone
#      with CPU and device decoding;
#   5. the test files whose defaults change on a GPU (the default Trainer picks the card, bf16 and
#      device decoding there).
# Most telling first, for a lease that ends early. The logs go to OUT_DIR (default gpu-check/,
# six files); the benchmark's report to OUT_DIR/../gpu-check-benchmark.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
status=0
step() { echo "== $1" >&2; }

step card
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0), '| bf16', torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$out/card.txt"

step "GPU tests"
$py -m pytest -q -p no:cacheprovider --timeout 300 tests/test_gpu.py 2>&1 | tee "$out/test_gpu.txt" || status=1

step "zoo benchmark on the demo set"
start=$(date +%s.%N)
$py -m zoo benchmark --backbone resnet50 vgg16 --out "$out/../gpu-check-benchmark" --overwrite true >"$out/benchmark.txt" 2>"$out/benchmark.err" || status=1
echo "zoo benchmark --backbone resnet50 vgg16: $($py -c "print(round($(date +%s.%N) - $start, 1))") s" | tee -a "$out/benchmark.txt"
cat "$out/benchmark.txt"; tail -3 "$out/benchmark.err"

step "embedding throughput"
$py benchmarks/embed_throughput.py --backbones resnet50 mobilenetv2_100 vgg16 --seconds 2 --images 400 \
    --phone 40 --screens 40 --batch-size 64 --num-workers 8 --data-path 2>&1 | tee "$out/throughput.txt" || status=1
step "test files whose defaults change on a GPU"
$py -m pytest -q -p no:cacheprovider --timeout 300 -n 8 tests/test_streaming.py tests/test_precision.py \
    tests/test_runtime.py tests/test_training.py tests/test_interpolation.py tests/test_metric_learning.py \
    tests/test_index.py tests/test_cli.py tests/test_check.py tests/test_duplicates.py tests/test_serve.py \
    tests/test_seams.py tests/test_data.py 2>&1 | tee "$out/tests_on_gpu.txt" || status=1

exit $status
