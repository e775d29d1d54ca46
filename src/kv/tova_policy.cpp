#include "kvbench/kv/tova_policy.h"

#include "kvbench/core/error.h"

namespace kvbench {

TovaPolicy::TovaPolicy(int64_t budget, EvictionTiming timing) : budget_(budget), timing_(timing) {
  KVB_CHECK(budget >= 1, "tova: budget must be >= 1");
}

nlohmann::json TovaPolicy::params() const {
  return {{"budget", budget_}, {"evict", eviction_timing_name(timing_)}};
}

at::Tensor TovaPolicy::select(const RetentionInput& in) const {
  KVB_CHECK(in.current.defined(), "tova: the cache gave no attention of the newest query");
  const int64_t kv_heads = in.current.size(0);
  // Every KV head has as many query heads, so the mean over KV heads of the group means is
  // the mean over all heads of the layer.
  at::Tensor scores = in.current.mean(0, /*keepdim=*/true);  // [1, held]
  return top_tokens(scores, budget_).expand({kv_heads, budget_}).contiguous();
}

}  // namespace kvbench
