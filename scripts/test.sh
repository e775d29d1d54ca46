#!/usr/bin/env bash
# Sets up (dependencies + build, see setup.sh) and runs every test: the GoogleTest binary and
# the end-to-end CLI tests, through ctest. This is what CI runs (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
ctest --test-dir "${BUILD_DIR:-$root/build}" --output-on-failure -j"$(nproc)" "$@"
