#!/usr/bin/env bash
# Builds the torch-free GPU programs into build-gpu/ with nvcc alone (no CMake, no libtorch):
# the kernel tests (gtest, linked statically) and the decode benchmark. Runs here (CUDA
# toolkit, no GPU) so the binaries can travel to a lent GPU machine, or there.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
ARCH=(-gencode=arch=compute_90a,code=sm_90a)
OUT=build-gpu
mkdir -p "$OUT"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels -c kernels/decode_attention.cu -o "$OUT/decode_attention.o" \
  2>"$OUT/ptxas.log"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/device_query.cu -o "$OUT/device_query.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/kv_append.cu -o "$OUT/kv_append.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/kv_paged_decode.cu -o "$OUT/kv_paged_decode.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -o "$OUT/gpu_decode_bench" bench/gpu_decode_bench.cu \
  "$OUT/decode_attention.o"
if [ -f /usr/lib/x86_64-linux-gnu/libgtest.a ]; then
  g++ -std=c++17 -O2 -Ikernels -Itests/gpu -I/usr/local/cuda/include -o "$OUT/gpu_tests" \
    tests/gpu/decode_attention_test.cpp tests/gpu/kv_append_test.cpp tests/gpu/paged_cache_builder.cpp \
    "$OUT/decode_attention.o" "$OUT/kv_append.o" "$OUT/kv_paged_decode.o" \
    -L/usr/local/cuda/lib64 -lcudart_static -lgtest -lgtest_main -lpthread -ldl -lrt
fi
grep -c "spill stores" "$OUT/ptxas.log" >/dev/null && echo "built $OUT/ (ptxas report: $OUT/ptxas.log)"
