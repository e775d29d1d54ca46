#include "kvbench/kv/streaming_llm_policy.h"

#include "kvbench/core/error.h"

namespace kvbench {

StreamingLlmPolicy::StreamingLlmPolicy(int64_t sinks, int64_t window, EvictionTiming timing,
                                       bool rerotated)
    : sinks_(sinks), window_(window), timing_(timing), rerotated_(rerotated) {
  KVB_CHECK(sinks >= 0 && window >= 1, "streamingllm: sinks must be >= 0 and window >= 1");
}

nlohmann::json StreamingLlmPolicy::params() const {
  return {{"sinks", sinks_},
          {"window", window_},
          {"evict", eviction_timing_name(timing_)},
          {"positions", rerotated_ ? "rerotated" : "original"}};
}

at::Tensor StreamingLlmPolicy::select(const RetentionInput& in) const {
  const at::Tensor& pos = in.positions;  // [kv_heads, held]
  at::Tensor keep = pos.lt(sinks_).logical_or_(pos.ge(in.length - window_));
  at::Tensor idx = at::nonzero(keep);  // [kept total, 2], row-major: ascending per head
  const int64_t heads = pos.size(0);
  KVB_CHECK(idx.size(0) % heads == 0, "streamingllm: heads hold different positions");
  return idx.select(1, 1).reshape({heads, idx.size(0) / heads}).contiguous();
}

}  // namespace kvbench
