#include "kvbench/kv/retention_policy.h"

#include <cmath>
#include <limits>

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

at::Tensor prefill_window_attention(const at::Tensor& q, const at::Tensor& k, int64_t w) {
  const int64_t heads = q.size(0), kv_heads = k.size(0), n = k.size(1), group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  at::Tensor qw = q.narrow(1, n - w, w).to(at::kFloat).reshape({kv_heads, group * w, -1});
  at::Tensor scores = at::bmm(qw, k.to(at::kFloat).transpose(1, 2)).mul_(scale);  // [kvh, g*w, n]
  // Window query i sits at position n - w + i and sees keys up to it.
  at::Tensor key_pos = at::arange(n, q.options().dtype(at::kLong)).view({1, n});
  at::Tensor limit = at::arange(w, q.options().dtype(at::kLong)).add_(n - w).view({w, 1});
  at::Tensor hidden = key_pos.gt(limit).repeat({group, 1});  // [g*w, n]
  scores.masked_fill_(hidden.unsqueeze(0), -std::numeric_limits<float>::infinity());
  return at::softmax(scores, -1).reshape({heads, w, n});
}

}  // namespace kvbench
