#!/usr/bin/env bash
# Everything a lent GPU machine should run for issue 11, in one call, most important first,
# within a time budget: a session gets ~15 device-minutes in all (machine start included) and
# a machine left idle for 30 s goes back bare, so separate calls would each rebuild. Each
# stage runs under a cap and the budget's remainder; a stage that cannot start in time is
# skipped and logged, so a partial run still returns what it measured. Writes under $OUT:
# session.log (stages, exit codes, seconds) and one log per stage.
#   usage: scripts/gpu_session.sh [budget-seconds]   (default 540: a 600 s call less margin)
#   via the device tool: run(command="scripts/gpu_session.sh", timeout_s=600, carry=["build-gpu"])
# Expects build-gpu/ from scripts/gpu_build.sh (run here, carried there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kvbench-gpu}
mkdir -p "$OUT"
budget=${1:-540}
start=$SECONDS

log() { echo "[$((SECONDS - start))s] $*" | tee -a "$OUT/session.log"; }

# stage NAME CAP COMMAND...: runs COMMAND for at most CAP seconds (fewer when the budget has
# fewer left), its output in $OUT/NAME.log; skipped when under 20 s remain.
stage() {
  local name=$1 cap=$2
  shift 2
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt 20 ]; then
    log "$name: skipped (${left} s left)"
    return 1
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  log "$name: start (at most ${cap} s)"
  local t0=$SECONDS rc
  timeout --kill-after=5 "$cap" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "$name: rc=$rc in $((SECONDS - t0)) s$( { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && echo " (cut at the cap)")"
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader |
  tee -a "$OUT/session.log"
if ! build-gpu/gpu_tests --gtest_list_tests >/dev/null 2>&1; then
  stage rebuild_kernels 240 scripts/gpu_build.sh
fi

# 1. The kernels against their float64 references (numbers from a wrong kernel mean nothing).
stage gpu_tests 120 build-gpu/gpu_tests --gtest_brief=1
tail -4 "$OUT/gpu_tests.log"
# The kernels' SASS, to read here (this machine has no cuobjdump; perf-notes: instruction budget).
stage sass 30 bash -o pipefail -c "for o in decode_attention palu_decode gear_decode; do
  cuobjdump --dump-sass build-gpu/\$o.o | gzip > '$OUT'/\$o.sass.gz || exit 1; done"
# 2. Every format's decode kernel (v2 and v3 loops, Palu, GEAR) and SDPA in the same call.
stage decode_bench 150 build-gpu/gpu_decode_bench --out "$OUT/decode_bench.jsonl"
stage sdpa_peer 90 env PYTHONUNBUFFERED=1 python3 scripts/gpu_sdpa_peer.py \
  --ours "$OUT/decode_bench.jsonl" --out "$OUT/sdpa.jsonl"
tail -30 "$OUT/sdpa_peer.log"
# 3. The CLI against this PyTorch (the unit tests come last: they only check, not measure).
export LD_LIBRARY_PATH=${DEPS:-/tmp/kvbench-deps}/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
if stage build_cli 300 env KVBENCH_TARGETS=kvbench scripts/gpu_full_build.sh build-cuda; then
  # 4. The end-to-end acceptance (Llama-3-8B shapes, batch 16 x 8k), then the kernels suite.
  for suite in e2e kernels; do
    stage "$suite" 240 build-cuda/kvbench run -c "configs/gpu-$suite.json" --out "$OUT/$suite" \
      --log-level warn
    build-cuda/kvbench report "$OUT/$suite"/*.json >"$OUT/$suite-report.md" 2>&1 &&
      grep -v "^$" "$OUT/$suite-report.md" | head -40
  done
fi
# 5. compute-sanitizer on a subset of the kernel cases.
stage memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/gpu_tests \
  --gtest_brief=1 --gtest_filter='*_d128_h28x4_*:*_d64_h8x2_*_s5:*KvAppendGpu*:*RetainedDecodeGpu*:*LatentDecodeGpu*:*PaluDecodeGpu*:*GearDecodeGpu*:*ModelOpsGpu*'
# 6. The engine's unit tests on cuda (paged caches, model placement, streams).
if [ -x build-cuda/kvbench ] &&
  stage build_tests 240 env KVBENCH_TARGETS=kvbench_tests scripts/gpu_full_build.sh build-cuda; then
  stage unit_tests 180 build-cuda/tests/kvbench_tests --gtest_brief=1 \
    --gtest_filter='*PagedCache*:*PagedRetention*:*PagedQuest*:*KvAppend*:*KvEncode*:*GpuFormat*:*Retained*:*Latent*:*Palu*:*Gear*:*ModelOps*:*ModelPlacement*:*Bf16*:*TorchSdpa*:*KernelsSuiteGpu*:*CudaStream*:*DeviceTimer*'
  tail -15 "$OUT/unit_tests.log"
fi
# 7. What the decode kernels issue and where their warps wait (ncu, no clock control: the
#    card's settings are left alone), for the formats behind the acceptance gap, each loop at
#    batch 16 x 32k.
stage ncu 150 bash -c "for c in fp16:v2 int4:v2 int4:v3 kivi-2:v2 kivi-2:v3 kivi-4:v3; do
  echo \"== \$c\"; ncu --clock-control none --section SpeedOfLight --section Occupancy \
    --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    -k regex:decode_kernel --launch-skip 40 --launch-count 1 \
    build-gpu/gpu_decode_bench --profile \$c:16:32768 || exit 1; done"
log "done"
