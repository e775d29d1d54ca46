// ScissorHands (Liu et al. 2023, "Scissorhands: Exploiting the Persistence of Importance
// Hypothesis for LLM KV Cache Compression at Test Time"): a fixed budget per layer; whenever a
// layer holds more, drop the tokens that were most often unimportant. A token is unimportant to
// a query when that query gives it less than uniform attention, 1/t for a query attending t
// tokens; the cache counts, per held token, how many of the last `history` queries (the
// history window) that saw it did so, averaged over each KV head's query group. The `recent`
// newest tokens are protected; of the others the budget - recent with the lowest counts stay
// (ties to the earlier token). The layer shrinks to exactly the budget (the paper's drop
// amount m is 1 per decode step: the cache never holds more than budget after a step).
// Invariants: the recent window is always kept; a full layer holds exactly `budget` tokens.
#pragma once

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class ScissorHandsPolicy final : public RetentionPolicy {
 public:
  ScissorHandsPolicy(int64_t budget, int64_t recent, int64_t history, EvictionTiming timing);
  std::string name() const override { return "scissorhands"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kLowAttentionCounts; }
  EvictionTiming timing() const override { return timing_; }
  int64_t observation_window() const override { return history_; }
  int64_t budget(const RetentionInput&) const override { return budget_; }
  at::Tensor select(const RetentionInput& in) const override;
  // One set of operators for a rectangular batch (newest_batch), else per input.
  std::vector<at::Tensor> select_batch(
      const std::vector<const RetentionInput*>& inputs) const override;
  // At budget + 1 held tokens, of the budget + 1 - recent outside the window the one with the
  // most low-attention counts goes, the later of equal counts (top_tokens' stable order keeps
  // the earlier). A choice made once selects.
  std::optional<int64_t> drops_lowest(int64_t) const override {
    return timing_ == EvictionTiming::kDecode ? std::optional<int64_t>(recent_) : std::nullopt;
  }
  at::Tensor steady_scores(const at::Tensor& input) const override { return input.neg(); }

 private:
  int64_t budget_, recent_, history_;
  EvictionTiming timing_;
};

}  // namespace kvbench
