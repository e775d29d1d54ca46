#!/usr/bin/env bash
# Builds all of kvbench (model runtime, CLI, unit tests) on a lent GPU machine against the
# PyTorch with CUDA installed there, so that the engine's CUDA paths (the paged cache on
# `cuda`) build and run. That machine has nvcc, CMake, ninja and PyTorch but no Debian
# packages and no registry: the C++ libraries (CLI11, nlohmann_json, spdlog, fmt, PCRE2, ICU,
# googletest) travel as the .deb files scripts/gpu_build.sh downloads here into
# build-gpu/debs (carry build-gpu) and are unpacked under $DEPS; cmake/TextLibs.cmake finds
# PCRE2 and ICU without pkg-config (turned off: the unpacked .pc files would point at /usr).
#   usage: scripts/gpu_full_build.sh [build-dir]        (default: build-cuda)
#   KVBENCH_TARGETS="kvbench" builds the CLI alone (default: "kvbench kvbench_tests");
#   JOBS: parallel jobs (default: every core).
# Run what it built with the libraries on the loader path:
#   export LD_LIBRARY_PATH=${DEPS:-/tmp/kvbench-deps}/usr/lib/x86_64-linux-gnu
#   build-cuda/tests/kvbench_tests --gtest_filter='*PagedCache*'
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
deps=${DEPS:-/tmp/kvbench-deps}
ls build-gpu/debs/*.deb >/dev/null 2>&1 || { echo "no build-gpu/debs: run scripts/gpu_build.sh here and carry build-gpu"; exit 1; }
mkdir -p "$deps" "$build"
for f in build-gpu/debs/*.deb; do
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$f" "$deps"
  else  # a .deb is an ar archive holding data.tar.*
    tmp=$(mktemp -d) && (cd "$tmp" && ar x "$OLDPWD/$f" && tar -xf data.tar.* -C "$deps") && rm -rf "$tmp"
  fi
done
torch_prefix=${TORCH_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}
# PyTorch 2.14's ATen headers refuse C++17 (2.13's still take it); from 2.12 on the build uses
# C++20, which kvbench also is.
cxx_std=$(python3 -c 'import torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print(20 if v >= (2, 12) else 17)' 2>/dev/null || echo 17)
# A failed build goes on with the other files (-k), so that one log shows every error a
# PyTorch release's API changes cause, not only the first file's.
# PyTorch's CUDA config finds the toolkit by nvcc on PATH (or CUDA_PATH), not by CMake's
# CUDA compiler; and its architecture probe needs no guess on a Hopper.
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
generator=() keep_going=(-- -k)
command -v ninja >/dev/null && generator=(-G Ninja) keep_going=(-- -k 0)
echo "configuring $build (torch: $torch_prefix, C++$cxx_std; log: $build/configure.log)"
# The PyTorch wheel ships fmt 12's headers in its include folder, which CMake passes (as
# -isystem) before the unpacked packages': spdlog 1.10 then meets fmt 12 and fails to compile
# (seen on the H200, 2026-12-04). A folder given with -I is searched before every -isystem
# one, unless it is also an -isystem folder (then GCC drops the -I): so fmt 9 gets a folder of
# its own, $deps/fmt-first. No torch header this build includes uses fmt (only the profiler's).
mkdir -p "$deps/fmt-first"
ln -sfn "$deps/usr/include/fmt" "$deps/fmt-first/fmt"
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DKVBENCH_CUDA=ON -DCMAKE_CXX_STANDARD="$cxx_std" \
  -DCMAKE_CXX_FLAGS="-I$deps/fmt-first" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON \
  >"$build/configure.log" 2>&1 ||
  { tail -60 "$build/configure.log"; exit 1; }
grep "kvbench:" "$build/configure.log" || true
read -r -a targets <<<"${KVBENCH_TARGETS:-kvbench kvbench_tests}"
jobs=${JOBS:-$(nproc)}
echo "building ${targets[*]} with $jobs jobs"
# One log per target list (build-kvbench.log, build-kvbench_tests.log, ...): a later build in
# the same folder keeps an earlier one's errors.
log=$build/build-$(IFS=-; echo "${targets[*]}").log
# The unit tests' link step lists their cases by running them (gtest_discover_tests): ICU's
# libraries there find their own dependencies (libicudata) by the loader path alone (the
# binary's RUNPATH serves its own needs, not its libraries'). Set for that build only.
if [[ " ${targets[*]} " == *" kvbench_tests "* ]]; then
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
cmake --build "$build" -j"$jobs" --target "${targets[@]}" "${keep_going[@]}" >"$log" 2>&1 ||
  { grep -E "error|Error" "$log" | head -80 || true; tail -20 "$log"; exit 1; }
echo "built ${targets[*]} in $build"
