#!/usr/bin/env bash
# The GPU checks of the sampling engine in one prepared run (about 6 minutes on an H200, most of it compiles):
#   1. the decode block as this GPU's compiler builds it (kernels and bytes per step, relayouts per block);
#   2. generate_throughput.py on the ~1B shape: raw engine vs transformers (torch on the same GPU) at batch
#      1, 8 and 64, batch-1 decode against the HBM roofline, and the prefix-reuse speed-up;
#   3. batch 1 again with XLA command buffers (CUDA graphs) extended to the decode loop.
# Run from the repository root on the GPU machine; results go to $OUT (or ./gpu-check), six files in all.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD:$PWD/benchmarks" PYTHONUNBUFFERED=1
out="${OUT:-gpu-check}"
mkdir -p "$out"
shape=(--shape 1b --dtype bfloat16 --prompt-len 128 --new-tokens 256)
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt" || status=1
python3 benchmarks/decode_hlo.py --shape 1b --slots 1,64 --dump "$out/hlo" 2>&1 | tee "$out/decode_hlo.jsonl" \
  || status=1
python3 benchmarks/generate_throughput.py "${shape[@]}" --skip driver 2>&1 | tee "$out/throughput.log" || status=1
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE" \
  python3 benchmarks/generate_throughput.py "${shape[@]}" --batches 1 --skip driver,torch,prefix 2>&1 \
  | tee "$out/throughput_command_buffers.log" || status=1
exit "$status"
