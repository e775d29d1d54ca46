#include "kvbench/attention/cpu_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/simd.h"

namespace kvbench {
namespace {

constexpr int64_t kChunk = 512;  // tokens per task: large enough to amortise, small enough to split

// One (head, chunk) task's partial result for its `rows` queries.
struct Partial {
  std::vector<float> max, sum, out;  // [rows], [rows], [rows, head_dim]
};

}  // namespace

at::Tensor cpu_decode_attention(const at::Tensor& q_in, const TokenStore& keys,
                                const TokenStore& values, int64_t kv_heads, double scale,
                                const at::Tensor& prefix_q_in, int64_t prefix_tokens) {
  KVB_CHECK(q_in.dim() == 3 && q_in.size(1) == 1, "cpu attention: q must be [heads, 1, head_dim]");
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const int64_t heads = q.size(0), dim = q.size(2), tokens = keys.size();
  KVB_CHECK(heads % kv_heads == 0 && tokens > 0 && values.size() == tokens,
            "cpu attention: ", heads, " heads over ", kv_heads, " KV heads, ", tokens, " keys, ",
            values.size(), " values");
  const int64_t group = heads / kv_heads;
  const int64_t chunks = (tokens + kChunk - 1) / kChunk;
  std::vector<Partial> partials(static_cast<size_t>(kv_heads * chunks));
  const float* qp = q.data_ptr<float>();
  at::Tensor prefix_q;
  if (prefix_q_in.defined()) {
    KVB_CHECK(prefix_q_in.sizes() == q_in.sizes() && prefix_tokens >= 0 && prefix_tokens <= tokens,
              "cpu attention: prefix query ", prefix_q_in.sizes(), " over ", prefix_tokens, " of ",
              tokens, " tokens");
    prefix_q = prefix_q_in.to(at::kFloat).contiguous();
  } else {
    prefix_tokens = 0;
  }
  const float* pq = prefix_tokens > 0 ? prefix_q.data_ptr<float>() : nullptr;
  const float s = static_cast<float>(scale);

  at::parallel_for(0, kv_heads * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / chunks, t0 = (task % chunks) * kChunk;
      const int64_t t1 = std::min(tokens, t0 + kChunk), len = t1 - t0;
      Partial& part = partials[static_cast<size_t>(task)];
      p.assign(static_cast<size_t>(group * len), 0.0f);
      // Tokens before prefix_tokens are scored with the prefix query, the rest with q.
      const int64_t split = std::min(std::max(prefix_tokens, t0), t1);
      if (split > t0) keys.dot(h, pq + h * group * dim, group, t0, split, p.data(), len);
      if (t1 > split)
        keys.dot(h, qp + h * group * dim, group, split, t1, p.data() + (split - t0), len);
      part.max.assign(static_cast<size_t>(group), -INFINITY);
      part.sum.assign(static_cast<size_t>(group), 0.0f);
      for (int64_t r = 0; r < group; ++r) {
        float* row = p.data() + r * len;
        const float m = simd::scale_max(row, len, s);
        part.max[r] = m;
        part.sum[r] = simd::exp_shift_sum(row, len, m);
      }
      part.out.assign(static_cast<size_t>(group * dim), 0.0f);
      values.accumulate(h, p.data(), group, t0, t1, len, part.out.data());
    }
  });

  // Merge each head's chunks: rescale by exp(chunk max - global max).
  at::Tensor out = at::zeros({heads, 1, dim}, at::kFloat);
  float* op = out.data_ptr<float>();
  for (int64_t h = 0; h < kv_heads; ++h) {
    for (int64_t r = 0; r < group; ++r) {
      float m = -INFINITY;
      for (int64_t c = 0; c < chunks; ++c) m = std::max(m, partials[h * chunks + c].max[r]);
      float denom = 0;
      float* o = op + (h * group + r) * dim;
      for (int64_t c = 0; c < chunks; ++c) {
        const Partial& part = partials[static_cast<size_t>(h * chunks + c)];
        const float w = std::exp(part.max[r] - m);
        denom += w * part.sum[r];
        for (int64_t d = 0; d < dim; ++d) o[d] += w * part.out[r * dim + d];
      }
      for (int64_t d = 0; d < dim; ++d) o[d] /= denom;
    }
  }
  return out;
}

}  // namespace kvbench
