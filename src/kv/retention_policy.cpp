#include "kvbench/kv/retention_policy.h"

#include "kvbench/core/error.h"

namespace kvbench {

const char* eviction_timing_name(EvictionTiming timing) {
  return timing == EvictionTiming::kDecode ? "decode" : "after_prefill";
}

at::Tensor FullRetention::select(const RetentionInput& in) const {
  const int64_t held = in.positions.size(1);
  return at::arange(held, at::kLong).expand({in.positions.size(0), held}).contiguous();
}

at::Tensor top_tokens(const at::Tensor& scores, int64_t n) {
  KVB_CHECK(scores.dim() == 2 && n >= 0 && n <= scores.size(1), "top_tokens: ", n, " of ",
            scores.sizes());
  // Stable descending sort: equal scores keep their token order, so the earlier token wins.
  at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/1,
                                          /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(1, 0, n), 1)).contiguous();
}

}  // namespace kvbench
