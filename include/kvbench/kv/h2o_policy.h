// H2O (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of
// Large Language Models"): every token's score is the attention probability it has received,
// accumulated over every query so far (the prefill's column sums, then each decode row; under
// GQA averaged over the query group of its KV head). When a layer holds more than
// heavy + recent tokens, keep the `recent` newest tokens and the `heavy` highest-scoring others.
// Optionally each score is divided by the number of queries that could see the token
// (T - position), removing the bias towards early tokens. Needs attention probabilities at
// every step, which the cache computes from the stored keys (the cost is part of the measured
// time). Invariants: the recent window is always kept; evicted tokens never return; a full
// layer holds exactly heavy + recent tokens.
// Either count may instead be a fraction of the prompt (the paper's and its code's way:
// heavy = recent = 10% of the prompt by default): heavy = floor(ratio * prompt), recent the
// same but at least 1, fixed per sequence at its prefill, as the reference fixes its budgets
// at the first forward pass.
#pragma once

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

// Fractions of the prompt that replace the counts; 0: the count is used.
struct H2oRatios {
  double heavy = 0, recent = 0;
};

class H2oPolicy final : public RetentionPolicy {
 public:
  H2oPolicy(int64_t heavy, int64_t recent, bool normalize, EvictionTiming timing,
            H2oRatios ratios = {});
  std::string name() const override { return "h2o"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kScoresEveryStep; }
  EvictionTiming timing() const override { return timing_; }
  int64_t budget(const RetentionInput& in) const override;
  bool budget_needs_prompt() const override { return ratios_.heavy > 0 || ratios_.recent > 0; }
  at::Tensor select(const RetentionInput& in) const override;
  // One set of operators for a rectangular batch (newest_batch), else per input.
  std::vector<at::Tensor> select_batch(
      const std::vector<const RetentionInput*>& inputs) const override;
  // At budget + 1 held tokens the `heavy` highest of the heavy + 1 outside the window stay:
  // the lowest sum goes, and top_tokens' stable order drops the later of equal scores.
  // Normalized scores depend on the positions: those select(); so does a choice made once.
  // A window from the prompt is that sequence's.
  std::optional<int64_t> drops_lowest(int64_t prompt) const override;

 private:
  struct Counts {
    int64_t heavy, recent;
  };
  Counts counts(int64_t prompt) const;  // the counts for a sequence with this prompt

  int64_t heavy_, recent_;
  bool normalize_;
  EvictionTiming timing_;
  H2oRatios ratios_;
};

}  // namespace kvbench
