#!/usr/bin/env bash
# One call's worth of GPU checks for a lent GPU machine: kernel tests, compute-sanitizer
# memcheck on a subset, the decode benchmark and PyTorch's SDPA beside it. Expects
# build-gpu/ from scripts/gpu_build.sh (built here or there); writes logs under $OUT.
#   usage: scripts/gpu_check.sh [tests|bench|all|full|e2e|kernels]
# full: builds all of kvbench there (scripts/gpu_full_build.sh), runs the paged-cache,
# appender and model-placement unit tests on cuda, and configs/paged-formats.json on the CPU
# and on the GPU (attention "paged"), whose fidelity must agree.
# e2e: the full build, then configs/gpu-e2e.json (Llama-3-8B shapes, fp16 weights on the GPU,
# batch 16 x 8k: the issue's end-to-end acceptance numbers).
# kernels: the full build, then configs/gpu-kernels.json (the kernels suite on cuda: every
# paged format's decode kernel against copy bandwidth and SDPA, batch 16, 1k-128k).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kvbench-gpu}
mkdir -p "$OUT"
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv,noheader
if ! build-gpu/gpu_tests --gtest_list_tests >/dev/null 2>&1; then
  echo "carried binaries do not run here; building with nvcc (no gtest: tests skipped)"
  scripts/gpu_build.sh || exit 1
fi
rc=0
if [ "$what" = full ] || [ "$what" = e2e ] || [ "$what" = kernels ]; then
  scripts/gpu_full_build.sh build-cuda 2>&1 | tee "$OUT/full_build.log" | tail -5
  [ -x build-cuda/kvbench ] || exit 1
  export LD_LIBRARY_PATH=${DEPS:-/tmp/kvbench-deps}/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
if [ "$what" = e2e ] || [ "$what" = kernels ]; then
  build-cuda/kvbench run -c "configs/gpu-$what.json" --out "$OUT/$what" 2>&1 | tee "$OUT/$what.log" | tail -30
  rc=${PIPESTATUS[0]}
  # The tables with each method's ratios to fp16 (the acceptance numbers) and host shares.
  build-cuda/kvbench report "$OUT/$what"/*.json >"$OUT/$what-report.md" 2>&1
  grep -v "^$" "$OUT/$what-report.md" | head -60
  exit "$rc"
fi
if [ "$what" = full ]; then
  build-cuda/tests/kvbench_tests --gtest_brief=1 \
    --gtest_filter='*PagedCache*:*PagedRetention*:*PagedQuest*:*KvAppend*:*KvEncode*:*GpuFormat*:*Retained*:*Latent*:*Palu*:*Gear*:*ModelOps*:*ModelPlacement*:*Bf16*:*TorchSdpa*:*KernelsSuiteGpu*:*CudaStream*:*DeviceTimer*' 2>&1 |
    tee "$OUT/paged_tests.log" | tail -15 || rc=1
  for dev in cpu cuda; do
    build-cuda/kvbench run -c configs/paged-formats.json --set device=$dev --out "$OUT/paged-$dev" \
      --log-level warn >"$OUT/paged-$dev.log" 2>&1 || rc=1
    grep -E "^== |KL|^ +[0-9]" "$OUT/paged-$dev.log" | head -60
  done
  exit $rc
fi
if [ "$what" != bench ]; then
  build-gpu/gpu_tests --gtest_brief=1 2>&1 | tee "$OUT/gpu_tests.log" | tail -25 || rc=1
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/gpu_tests --gtest_brief=1 \
    --gtest_filter='*_d128_h28x4_*:*_d64_h8x2_*_s5:*KvAppendGpu*:*RetainedDecodeGpu*:*LatentDecodeGpu*:*PaluDecodeGpu*:*GearDecodeGpu*:*ModelOpsGpu*' >"$OUT/memcheck.log" 2>&1
  memcheck_rc=$?
  [ "$memcheck_rc" = 0 ] || rc=1
  echo "memcheck rc=$memcheck_rc ($(grep -c 'Invalid' "$OUT/memcheck.log") invalid accesses); tail:"; tail -3 "$OUT/memcheck.log"
fi
if [ "$what" != tests ]; then
  build-gpu/gpu_decode_bench --out "$OUT/decode_bench.jsonl" 2>&1 | tee "$OUT/decode_bench.log" || rc=1
  PYTHONUNBUFFERED=1 python3 scripts/gpu_sdpa_peer.py --ours "$OUT/decode_bench.jsonl" --out "$OUT/sdpa.jsonl" 2>&1 \
    | tee "$OUT/sdpa.log" || rc=1
fi
exit $rc
