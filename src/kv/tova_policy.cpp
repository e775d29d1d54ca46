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

std::vector<at::Tensor> TovaPolicy::select_batch(
    const std::vector<const RetentionInput*>& inputs) const {
  std::vector<at::Tensor> scores;
  for (const RetentionInput* in : inputs) {
    const at::Tensor& c = in->current;
    if (!c.defined() || c.dim() != 2 || c.sizes() != inputs[0]->current.sizes() ||
        c.device() != inputs[0]->current.device() ||
        c.scalar_type() != inputs[0]->current.scalar_type() || c.size(1) < budget_)
      return RetentionPolicy::select_batch(inputs);  // select() says what is wrong
    scores.push_back(c);
  }
  if (scores.size() < 2) return RetentionPolicy::select_batch(inputs);
  const int64_t kv_heads = scores[0].size(0);
  return top_tokens(at::stack(scores).mean(1, /*keepdim=*/true), budget_)  // [inputs, 1, budget]
      .expand({-1, kv_heads, budget_})
      .contiguous()
      .unbind(0);
}

}  // namespace kvbench
