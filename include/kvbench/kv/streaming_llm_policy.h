// StreamingLLM (Xiao et al. 2024, "Efficient Streaming Language Models with Attention Sinks"):
// keep the first `sinks` tokens (attention sinks) and the last `window` tokens. Needs only
// positions. Kept = [0, S) U [T - W, T) for T tokens entered. `positions`: `original` keeps
// every key at its logical position; `rerotated` gives kept tokens their positions inside the
// cache (their rank among the kept tokens), as the paper's pre-RoPE cache does. The cache
// makes that exact without re-encoding a key: scores depend only on relative rotation, the
// window and the query shift by the same offset, so only the sinks are attended differently,
// through the query rotated by that offset (CompressedKVCache::attend_cache_positions).
// Timing `decode` evicts after every append that leaves more than S + W tokens (a decode token
// then attends the S sinks and the W newest tokens, itself included); `after_prefill` evicts
// once, after the prefill has been attended, and lets decode grow the cache again.
#pragma once

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class StreamingLlmPolicy final : public RetentionPolicy {
 public:
  StreamingLlmPolicy(int64_t sinks, int64_t window, EvictionTiming timing, bool rerotated = false);
  std::string name() const override { return "streamingllm"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kPositions; }
  EvictionTiming timing() const override { return timing_; }
  bool cache_positions() const override { return rerotated_; }
  bool same_tokens_every_head() const override { return true; }
  int64_t budget(const RetentionInput&) const override { return sinks_ + window_; }
  at::Tensor select(const RetentionInput& in) const override;
  // [0, sinks) and [length - window, length).
  std::optional<RetentionSpan> span(const RetentionInput& in) const override {
    return RetentionSpan{sinks_, in.length - window_};
  }
  // Evicting at every decode step, keeping original positions: its kept tokens are a ring.
  std::optional<SinksAndWindow> sinks_and_window() const override {
    if (timing_ != EvictionTiming::kDecode || rerotated_) return std::nullopt;
    return SinksAndWindow{sinks_, window_};
  }

 private:
  // select() over positions on the host ([kv_heads, held] int64, contiguous), without tensor
  // operators.
  at::Tensor select_on_host(const at::Tensor& positions, int64_t length) const;

  int64_t sinks_, window_;
  EvictionTiming timing_;
  bool rerotated_;
};

}  // namespace kvbench
