// Pieces shared by the model suites: synthetic prompts (token ids, as llama-bench feeds),
// the cell's cache, and memory checks made before anything large is allocated.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/kv/kv_cache.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

// `count` prompts of `tokens` ids drawn uniformly from [0, vocab), seeded.
std::vector<std::vector<int64_t>> synthetic_prompts(int64_t count, int64_t tokens, int64_t vocab,
                                                    uint64_t seed);
// The cell's KV cache for the run's model and the cell's method.
std::unique_ptr<KVCache> make_cell_cache(const CellContext& ctx);
// Throws Error "<what> needs X but only Y of memory is available" when `bytes` exceeds 80% of
// MemAvailable, so an impossible cell fails cleanly instead of meeting the OOM killer.
void check_memory_fits(uint64_t bytes, const std::string& what);
// Uncompressed KV bytes for `sequences` x `tokens` on the run's model at its KV dtype.
uint64_t full_kv_bytes(const CellContext& ctx, int64_t sequences, int64_t tokens);

}  // namespace kvbench
