#!/usr/bin/env bash
# Builds the torch-free GPU programs into build-gpu/ with nvcc alone (no CMake, no libtorch):
# the kernel tests (gtest, linked statically) and the decode benchmark; and downloads the
# Debian packages the full build on the GPU machine needs into build-gpu/debs. Runs here
# (CUDA toolkit, no GPU) so that build-gpu/ can travel to a lent GPU machine (carry it).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
ARCH=(-gencode=arch=compute_90a,code=sm_90a)
OUT=build-gpu
mkdir -p "$OUT"
# nvcc with its ptxas report in LOG (shown, and the script stopped, when the compile fails).
compile_logged() {
  local log=$1
  shift
  "$NVCC" "$@" 2>"$log" || { tail -30 "$log"; exit 1; }
}
compile_logged "$OUT/ptxas.log" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels \
  -c kernels/decode_attention.cu -o "$OUT/decode_attention.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/device_query.cu -o "$OUT/device_query.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/kv_append.cu -o "$OUT/kv_append.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/kv_paged_decode.cu -o "$OUT/kv_paged_decode.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/retained_decode.cu -o "$OUT/retained_decode.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/latent_decode.cu -o "$OUT/latent_decode.o"
compile_logged "$OUT/ptxas-palu.log" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels \
  -c kernels/palu_decode.cu -o "$OUT/palu_decode.o"
compile_logged "$OUT/ptxas-gear.log" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels \
  -c kernels/gear_decode.cu -o "$OUT/gear_decode.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/model_ops.cu -o "$OUT/model_ops.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/quest_score.cu -o "$OUT/quest_score.o"
compile_logged "$OUT/ptxas-summed.log" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels \
  -c kernels/summed_attention.cu -o "$OUT/summed_attention.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/head_project.cu -o "$OUT/head_project.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/steady_evict.cu -o "$OUT/steady_evict.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -c kernels/thin_qr.cu -o "$OUT/thin_qr.o"
compile_logged "$OUT/ptxas-small-gemm.log" -std=c++17 -O3 "${ARCH[@]}" -Xptxas -v -Ikernels \
  -c kernels/small_gemm.cu -o "$OUT/small_gemm.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -o "$OUT/gpu_decode_bench" bench/gpu_decode_bench.cu \
  "$OUT/decode_attention.o" "$OUT/palu_decode.o" "$OUT/gear_decode.o" "$OUT/retained_decode.o" \
  "$OUT/kv_paged_decode.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -o "$OUT/summed_attention_bench" \
  bench/summed_attention_bench.cu "$OUT/summed_attention.o"
"$NVCC" -std=c++17 -O3 "${ARCH[@]}" -Ikernels -o "$OUT/small_gemm_bench" \
  bench/small_gemm_bench.cu "$OUT/small_gemm.o"
rm -f "$OUT/gpu_tests"  # never carry a stale one that tests older kernels
if [ -f /usr/lib/x86_64-linux-gnu/libgtest.a ]; then
  g++ -std=c++17 -O2 -Ikernels -Itests/gpu -I/usr/local/cuda/include -o "$OUT/gpu_tests" \
    tests/gpu/decode_attention_test.cpp tests/gpu/kv_append_test.cpp tests/gpu/retained_decode_test.cpp \
    tests/gpu/latent_decode_test.cpp tests/gpu/model_ops_test.cpp tests/gpu/palu_decode_test.cpp \
    tests/gpu/gear_decode_test.cpp tests/gpu/quest_score_test.cpp tests/gpu/summed_attention_test.cpp \
    tests/gpu/head_project_test.cpp tests/gpu/small_gemm_test.cpp tests/gpu/steady_evict_test.cpp tests/gpu/thin_qr_test.cpp \
    tests/gpu/paged_cache_builder.cpp \
    "$OUT/decode_attention.o" "$OUT/kv_append.o" "$OUT/kv_paged_decode.o" "$OUT/retained_decode.o" "$OUT/latent_decode.o" \
    "$OUT/model_ops.o" "$OUT/palu_decode.o" "$OUT/gear_decode.o" "$OUT/quest_score.o" "$OUT/summed_attention.o" \
    "$OUT/head_project.o" "$OUT/small_gemm.o" "$OUT/steady_evict.o" "$OUT/thin_qr.o" -L/usr/local/cuda/lib64 -lcudart_static -lgtest -lgtest_main -lpthread -ldl -lrt
fi
# The C++ libraries the full build there needs (scripts/gpu_full_build.sh): Debian packages,
# downloaded here (that machine has no registry), unpacked there.
mkdir -p "$OUT/debs"
if command -v apt-get >/dev/null; then
  (cd "$OUT/debs" && apt-get download -q libcli11-dev nlohmann-json3-dev libspdlog-dev \
    libspdlog1.10 libfmt-dev libfmt9 libpcre2-dev libpcre2-8-0 libicu-dev libicu72 \
    libgtest-dev >/dev/null 2>&1) || echo "apt-get download failed: no debs for the full build"
fi
[ -x "$OUT/gpu_tests" ] || echo "no libgtest.a here: $OUT/gpu_tests not built (install libgtest-dev)"
echo "built $OUT/ (ptxas reports: $OUT/ptxas*.log)"
