#include "kvbench/suites/workload.h"

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"

namespace kvbench {

std::vector<std::vector<int64_t>> synthetic_prompts(int64_t count, int64_t tokens, int64_t vocab,
                                                    uint64_t seed) {
  Rng rng(seed);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(count));
  for (auto& p : prompts) {
    p.resize(static_cast<size_t>(tokens));
    for (auto& id : p) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
  }
  return prompts;
}

std::unique_ptr<KVCache> make_cell_cache(const CellContext& ctx) {
  const ModelConfig& c = ctx.model.get().config();
  return make_kv_cache(ctx.method, c.num_layers, c.num_kv_heads, c.head_dim, ctx.model.kv_dtype());
}

void check_memory_fits(uint64_t bytes, const std::string& what) {
  const uint64_t available = available_memory_bytes();
  if (available == 0) return;
  KVB_CHECK(bytes <= available / 10 * 8, what, " needs ", format_bytes(bytes), " but only ",
            format_bytes(available), " of memory is available");
}

uint64_t full_kv_bytes(const CellContext& ctx, int64_t sequences, int64_t tokens) {
  const int element = static_cast<int>(at::elementSize(ctx.model.kv_dtype()));
  return static_cast<uint64_t>(sequences) * static_cast<uint64_t>(tokens) *
         ctx.model.get().config().kv_bytes_per_token(element);
}

}  // namespace kvbench
