// SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before Generation"),
// prefill only. The attention probabilities of the prefill's last w queries (the observation
// window) over the prefix [0, T - w) are summed over those queries, pooled along tokens
// (kernel k, stride 1, padding k / 2; avg pooling counts the padding, max pooling ignores it)
// and averaged over each KV head's query group; each KV head keeps its top C - w prefix tokens
// plus the w window tokens: C tokens. A prefill of T <= C tokens is kept whole.
#pragma once

#include <string>

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

// The per-KV-head SnapKV scores of the prefix.
//   attention: [num_heads, w, T] fp32 probabilities of the last w queries over all T tokens
//   returns [kv_heads, T - w] fp32
at::Tensor snapkv_scores(const at::Tensor& attention, int64_t kv_heads, int64_t kernel,
                         const std::string& pooling);

// SnapKV's selection from the cache's window attention: per KV head the top keep - window
// prefix tokens by snapkv_scores plus the `window` newest tokens ([kv_heads, keep] ascending).
at::Tensor snapkv_select(const RetentionInput& in, int64_t keep, int64_t window, int64_t kernel,
                         const std::string& pooling, const char* policy);

class SnapKvPolicy final : public RetentionPolicy {
 public:
  SnapKvPolicy(int64_t budget, int64_t window, int64_t kernel, std::string pooling);
  std::string name() const override { return "snapkv"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kWindowScores; }
  EvictionTiming timing() const override { return EvictionTiming::kAfterPrefill; }
  int64_t observation_window() const override { return window_; }
  int64_t budget(const RetentionInput&) const override { return budget_; }
  at::Tensor select(const RetentionInput& in) const override;

 private:
  int64_t budget_, window_, kernel_;
  std::string pooling_;
};

}  // namespace kvbench
