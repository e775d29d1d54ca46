#include "kvbench/kv/retention_policy.h"

#include <algorithm>
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

at::Tensor newest_indices(const RetentionInput& in, int64_t first) {
  const at::Tensor& pos = in.positions;
  if (!in.host_positions.defined())
    return at::nonzero(pos.ge(first)).select(1, 1).reshape({pos.size(0), -1});
  // Counted with a loop over the host copy (this runs per sequence, layer and decode step).
  const at::Tensor host =
      in.host_positions.scalar_type() == at::kLong && in.host_positions.is_contiguous()
          ? in.host_positions
          : in.host_positions.to(at::kLong).contiguous();
  const int64_t heads = host.size(0), held = host.size(1);
  const int64_t* p = host.data_ptr<int64_t>();
  int64_t r = -1;
  for (int64_t h = 0; h < heads; ++h) {
    // Positions ascend per head: those >= first are a suffix.
    const int64_t* row = p + h * held;
    const int64_t n = held - (std::lower_bound(row, row + held, first) - row);
    KVB_CHECK(r < 0 || n == r,
              "retention: KV heads hold different numbers of tokens at positions >= ", first);
    r = n;
  }
  return at::arange(held - r, held, pos.options().dtype(at::kLong)).expand({pos.size(0), r});
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

at::Tensor summed_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                            int64_t start) {
  const int64_t heads = q.size(0), n = q.size(1), kv_heads = keys.size(0), held = keys.size(1);
  const int64_t group = heads / kv_heads, head_dim = keys.size(2);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const at::Tensor keys_t = keys.to(at::kFloat).transpose(1, 2);   // [kvh, d, held]
  const at::Tensor kpos = key_pos.to(keys.device()).unsqueeze(1);  // [kvh, 1, held]
  at::Tensor total = at::zeros({kv_heads, held}, keys.options().dtype(at::kFloat));
  // Queries in chunks, so a long prefill never builds a [heads, n, n] matrix at once.
  constexpr int64_t kChunk = 256;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c = std::min(kChunk, n - c0);
    at::Tensor qc =
        q.narrow(1, c0, c).to(keys.device(), at::kFloat).reshape({kv_heads, group * c, -1});
    at::Tensor s = at::bmm(qc, keys_t).mul_(scale);  // [kvh, group * c, held]
    // Row g * c + i is query position start + c0 + i; it sees held tokens at or before it.
    at::Tensor query_pos =
        at::arange(c, kpos.options()).add_(start + c0).repeat({group}).view({1, group * c, 1});
    s.masked_fill_(kpos.gt(query_pos), -std::numeric_limits<float>::infinity());
    total.add_(at::softmax(s, -1).sum(1).div_(static_cast<double>(group)));
  }
  return total;
}

at::Tensor newest_query_attention(const at::Tensor& q, const at::Tensor& keys) {
  const int64_t heads = q.size(0), kv_heads = keys.size(0), group = heads / kv_heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(keys.size(2)));
  // The newest query sees every held token, so no mask.
  at::Tensor ql =
      q.narrow(1, q.size(1) - 1, 1).to(keys.device(), at::kFloat).reshape({kv_heads, group, -1});
  at::Tensor s = at::bmm(ql, keys.to(at::kFloat).transpose(1, 2)).mul_(scale);  // [kvh, g, held]
  return at::softmax(s, -1).mean(1);
}

at::Tensor low_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                         int64_t start, int64_t history) {
  const int64_t heads = q.size(0), n = q.size(1), kv_heads = keys.size(0), held = keys.size(1);
  const int64_t group = heads / kv_heads;
  // Only the block's last `history` queries can still be in the window.
  const int64_t m = std::min(n, history), first = start + n - m;
  const double scale = 1.0 / std::sqrt(static_cast<double>(keys.size(2)));
  at::Tensor qm =
      q.narrow(1, n - m, m).to(keys.device(), at::kFloat).reshape({kv_heads, group * m, -1});
  at::Tensor s = at::bmm(qm, keys.to(at::kFloat).transpose(1, 2)).mul_(scale);
  // Row g * m + i is the query at position first + i; it sees held tokens at or before it.
  const at::Tensor kpos = key_pos.to(keys.device());
  at::Tensor query_pos =
      at::arange(m, kpos.options()).add_(first).repeat({group}).view({1, group * m, 1});
  at::Tensor seen = kpos.unsqueeze(1).le(query_pos);  // [kvh, g*m, held]
  s.masked_fill_(seen.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor uniform = seen.sum(-1, /*keepdim=*/true).to(at::kFloat).reciprocal_();  // 1/t
  at::Tensor low = at::softmax(s, -1).lt(uniform).logical_and_(seen);
  return low.reshape({kv_heads, group, m, held}).permute({0, 3, 1, 2});  // [kvh, held, g, m]
}

}  // namespace kvbench
