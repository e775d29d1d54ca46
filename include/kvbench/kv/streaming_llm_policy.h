// StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
// keep the first `sinks` tokens (attention sinks) and the last `window` tokens. Needs only
// positions. Kept = [0, S) U [T - W, T) for T tokens entered. Keys keep their original
// positions (the variant that re-rotates keys to positions inside the cache is not built yet).
// Timing `decode` evicts after every append that leaves more than S + W tokens (a decode token
// then attends the S sinks and the W newest tokens, itself included); `after_prefill` evicts
// once, after the prefill has been attended, and lets decode grow the cache again.
#pragma once

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class StreamingLlmPolicy final : public RetentionPolicy {
 public:
  StreamingLlmPolicy(int64_t sinks, int64_t window, EvictionTiming timing);
  std::string name() const override { return "streamingllm"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kPositions; }
  EvictionTiming timing() const override { return timing_; }
  bool over_budget(int64_t held) const override { return held > sinks_ + window_; }
  at::Tensor select(const RetentionInput& in) const override;
  int64_t budget() const override { return sinks_ + window_; }

 private:
  int64_t sinks_, window_;
  EvictionTiming timing_;
};

}  // namespace kvbench
