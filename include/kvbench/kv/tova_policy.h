// TOVA (Oren et al. 2024, "Transformers are Multi-State RNNs"): whenever a layer holds more
// than `budget` tokens, keep the `budget` tokens the newest query attends to most, its
// attention averaged over every head of the layer, so every head keeps the same set. No sinks,
// no window: the layer never holds more than the budget after a step. Needs the newest query's
// attention over the held tokens, computed by the cache from the stored keys, and only on the
// steps that evict.
#pragma once

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class TovaPolicy final : public RetentionPolicy {
 public:
  TovaPolicy(int64_t budget, EvictionTiming timing);
  std::string name() const override { return "tova"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kLastQueryScores; }
  EvictionTiming timing() const override { return timing_; }
  bool same_tokens_every_head() const override { return true; }
  int64_t budget(const RetentionInput&) const override { return budget_; }
  at::Tensor select(const RetentionInput& in) const override;
  // Inputs holding as many tokens: select()'s operators over their stacked scores (TOVA reads
  // no positions).
  std::vector<at::Tensor> select_batch(
      const std::vector<const RetentionInput*>& inputs) const override;
  // At budget + 1 held tokens every token but the one of lowest head-averaged score stays
  // (no window: it may be the newest), the later of equal scores going (top_tokens' stable
  // order). A choice made once selects.
  std::optional<int64_t> drops_lowest(int64_t) const override {
    return timing_ == EvictionTiming::kDecode ? std::optional<int64_t>(0) : std::nullopt;
  }
  // select()'s scores: the mean over the layer's KV heads, the same for every head.
  at::Tensor steady_scores(const at::Tensor& input) const override {
    return input.mean(1, /*keepdim=*/true).expand_as(input);
  }

 private:
  int64_t budget_;
  EvictionTiming timing_;
};

}  // namespace kvbench
