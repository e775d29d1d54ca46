#include "kvbench/kv/streaming_llm_policy.h"

#include <algorithm>
#include <utility>
#include <vector>

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
  if (pos.is_cpu() && pos.scalar_type() == at::kLong && pos.is_contiguous())
    return select_on_host(pos, in.length);
  at::Tensor keep = pos.lt(sinks_).logical_or_(pos.ge(in.length - window_));
  at::Tensor idx = at::nonzero(keep);  // [kept total, 2], row-major: ascending per head
  const int64_t heads = pos.size(0);
  KVB_CHECK(idx.size(0) % heads == 0, "streamingllm: heads hold different positions");
  return idx.select(1, 1).reshape({heads, idx.size(0) / heads}).contiguous();
}

at::Tensor StreamingLlmPolicy::select_on_host(const at::Tensor& pos, int64_t length) const {
  // Positions ascend per head, so the sinks are a prefix [0, a) and the window a suffix
  // [b, held): their union is read off with two searches per head, in one allocation (this
  // runs per sequence, layer and decode step: tensor operators would be most of its cost).
  const int64_t heads = pos.size(0), held = pos.size(1);
  const int64_t* p = pos.data_ptr<int64_t>();
  std::vector<std::pair<int64_t, int64_t>> ends(static_cast<size_t>(heads));  // (a, b) per head
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t* row = p + h * held;
    const int64_t a = std::lower_bound(row, row + held, sinks_) - row;
    ends[size_t(h)] = {a, std::max(a, std::lower_bound(row, row + held, length - window_) - row)};
  }
  const int64_t kept = ends[0].first + held - ends[0].second;
  at::Tensor out = at::empty({heads, kept}, at::kLong);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t h = 0; h < heads; ++h) {
    const auto [a, b] = ends[size_t(h)];
    KVB_CHECK(a + held - b == kept, "streamingllm: heads hold different numbers of positions");
    int64_t* dst = o + h * kept;
    for (int64_t i = 0; i < a; ++i) *dst++ = i;
    for (int64_t i = b; i < held; ++i) *dst++ = i;
  }
  return out;
}

}  // namespace kvbench
