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

namespace {

// The host copy as int64, contiguous (no operator when it already is).
at::Tensor host_longs(const at::Tensor& host) {
  return host.scalar_type() == at::kLong && host.is_contiguous() ? host
                                                                 : host.to(at::kLong).contiguous();
}

// How many positions >= first each head of `host` ([kv_heads, held] int64, ascending per head)
// holds when every head holds as many; -1 when they differ. A loop: this runs per sequence,
// layer and decode step.
int64_t newest_count(const at::Tensor& host, int64_t first) {
  const int64_t heads = host.size(0), held = host.size(1);
  const int64_t* p = host.data_ptr<int64_t>();
  int64_t r = -1;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t* row = p + h * held;  // ascending: those >= first are a suffix
    const int64_t n = held - (std::lower_bound(row, row + held, first) - row);
    if (r >= 0 && n != r) return -1;
    r = n;
  }
  return r;
}

}  // namespace

at::Tensor newest_indices(const RetentionInput& in, int64_t first) {
  const at::Tensor& pos = in.positions;
  if (!in.host_positions.defined() || !in.host_positions.is_cpu())
    return at::nonzero(pos.ge(first)).select(1, 1).reshape({pos.size(0), -1});
  const at::Tensor host = host_longs(in.host_positions);
  const int64_t r = newest_count(host, first), held = host.size(1);
  KVB_CHECK(r >= 0, "retention: KV heads hold different numbers of tokens at positions >= ", first);
  return at::arange(held - r, held, pos.options().dtype(at::kLong)).expand({pos.size(0), r});
}

std::optional<NewestBatch> newest_batch(const std::vector<const RetentionInput*>& inputs,
                                        int64_t recent, at::Tensor RetentionInput::*scores) {
  if (inputs.size() < 2) return std::nullopt;
  const int64_t E = int64_t(inputs.size());
  std::vector<at::Tensor> hosts, stacked;
  at::Tensor lengths = at::empty({E, 1, 1}, at::kLong);
  int64_t newest = -1;
  for (int64_t e = 0; e < E; ++e) {
    const RetentionInput& in = *inputs[size_t(e)];
    const at::Tensor& s = in.*scores;
    if (!s.defined() || !in.host_positions.defined() || !in.host_positions.is_cpu() ||
        s.sizes() != in.host_positions.sizes() ||
        (!stacked.empty() && s.device() != stacked.front().device()))
      return std::nullopt;
    hosts.push_back(host_longs(in.host_positions));
    stacked.push_back(s);
    if (hosts.back().sizes() != hosts.front().sizes()) return std::nullopt;
    const int64_t r = newest_count(hosts.back(), in.length - recent);
    if (r < 0 || (newest >= 0 && r != newest)) return std::nullopt;
    newest = r;
    lengths.data_ptr<int64_t>()[e] = in.length;
  }
  NewestBatch b;
  b.newest = newest;
  b.scores = at::stack(stacked);
  b.positions = at::stack(hosts);
  b.lengths = lengths;
  const at::Device device = b.scores.device();
  if (device.is_cuda()) {  // from pinned memory: the uploads do not wait for the device
    b.positions = b.positions.pin_memory().to(device, /*non_blocking=*/true);
    b.lengths = lengths.pin_memory().to(device, /*non_blocking=*/true);
  } else if (!device.is_cpu()) {
    b.positions = b.positions.to(device);
    b.lengths = lengths.to(device);
  }
  return b;
}

std::vector<at::Tensor> top_and_newest(const NewestBatch& batch, const at::Tensor& masked,
                                       int64_t top) {
  const at::Tensor& pos = batch.positions;
  const int64_t held = pos.size(2), r = batch.newest;
  const at::Tensor window =
      at::arange(held - r, held, pos.options()).expand({pos.size(0), pos.size(1), r});
  return std::get<0>(at::cat({top_tokens(masked, top), window}, 2).sort(2)).contiguous().unbind(0);
}

std::vector<at::Tensor> RetentionPolicy::select_batch(
    const std::vector<const RetentionInput*>& inputs) const {
  std::vector<at::Tensor> out;
  for (const RetentionInput* in : inputs) {
    // The policy works where its scores are (window scores live with the queries: the GPU on
    // cuda); the positions follow them.
    RetentionInput where = *in;
    for (const at::Tensor* t :
         {&in->window_attention, &in->accumulated, &in->current, &in->low_counts})
      if (t->defined() && t->device() != in->positions.device())  // from pinned memory, so
        where.positions =  // the upload does not wait for the device
            t->is_cuda() ? in->positions.contiguous().pin_memory().to(t->device(), true)
                         : in->positions.to(t->device());
    out.push_back(select(where));
  }
  return out;
}

at::Tensor top_tokens(const at::Tensor& scores, int64_t n) {
  KVB_CHECK((scores.dim() == 2 || scores.dim() == 3) && n >= 0 && n <= scores.size(-1),
            "top_tokens: ", n, " of ", scores.sizes());
  // Stable descending sort: equal scores keep their token order, so the earlier token wins.
  // torch's sort ranks NaN above every number: a NaN score is kept first, and the paths that
  // drop one token at a time (drop_lowest_batch, the steady kernel) follow the same rule.
  const int64_t last = scores.dim() - 1;
  at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/last,
                                          /*descending=*/true));
  return std::get<0>(at::sort(order.narrow(last, 0, n), last)).contiguous();
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
  KVB_CHECK(held >= n, "summed_attention: the block's ", n, " keys must be among the ", held,
            " held");
  const at::Tensor keys_t = keys.to(at::kFloat).transpose(1, 2);   // [kvh, d, held]
  const at::Tensor kpos = key_pos.to(keys.device()).unsqueeze(1);  // [kvh, 1, held]
  at::Tensor total = at::zeros({kv_heads, held}, keys.options().dtype(at::kFloat));
  // Queries in chunks, so a long prefill never builds a [heads, n, n] matrix at once. A chunk
  // reads only the keys its queries can see: what was held before the block, and the block's
  // own keys up to its last query (they are the last n held, in order), which halves the work
  // of a prefill against scoring every chunk over every key. Of those, only the chunk's own
  // keys can lie after one of its queries.
  constexpr int64_t kChunk = 256;
  const int64_t before = held - n;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c = std::min(kChunk, n - c0), seen = before + c0 + c;
    // The scale goes on the queries, and the mask on the chunk's own keys (every earlier key
    // is before each of its queries): the score matrix is written once, then read by softmax.
    at::Tensor qc = q.narrow(1, c0, c)
                        .to(keys.device(), at::kFloat)
                        .mul(scale)
                        .reshape({kv_heads, group * c, -1});
    at::Tensor s = at::bmm(qc, keys_t.narrow(2, 0, seen));  // [kvh, group * c, seen]
    // Row g * c + i is query position start + c0 + i; it sees held tokens at or before it.
    at::Tensor query_pos =
        at::arange(c, kpos.options()).add_(start + c0).repeat({group}).view({1, group * c, 1});
    s.narrow(2, before + c0, c)
        .masked_fill_(kpos.narrow(2, before + c0, c).gt(query_pos),
                      -std::numeric_limits<float>::infinity());
    total.narrow(1, 0, seen).add_(at::softmax(s, -1).sum(1).div_(static_cast<double>(group)));
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
