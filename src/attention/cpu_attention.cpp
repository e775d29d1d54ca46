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
                                const TokenRuns* runs, const at::Tensor& prefix_q_in,
                                int64_t prefix_tokens) {
  KVB_CHECK(q_in.dim() == 3 && q_in.size(1) == 1, "cpu attention: q must be [heads, 1, head_dim]");
  const at::Tensor q = q_in.to(at::kFloat).contiguous();
  const int64_t heads = q.size(0), dim = q.size(2), tokens = keys.size();
  KVB_CHECK(heads % kv_heads == 0 && tokens > 0 && values.size() == tokens,
            "cpu attention: ", heads, " heads over ", kv_heads, " KV heads, ", tokens, " keys, ",
            values.size(), " values");
  KVB_CHECK(!runs || static_cast<int64_t>(runs->size()) == kv_heads, "cpu attention: runs for ",
            runs ? runs->size() : 0, " of ", kv_heads, " KV heads");
  const int64_t group = heads / kv_heads;
  // Tasks: (head, t0, t1) chunks of at most kChunk tokens, grouped by head.
  struct Task {
    int64_t head, t0, t1;
  };
  std::vector<Task> tasks;
  std::vector<size_t> first(static_cast<size_t>(kv_heads + 1), 0);
  for (int64_t h = 0; h < kv_heads; ++h) {
    first[h] = tasks.size();
    const std::vector<std::array<int64_t, 2>> all = {{0, tokens}};
    for (const auto& run : runs ? (*runs)[h] : all) {
      KVB_CHECK(run[0] >= 0 && run[0] < run[1] && run[1] <= tokens, "cpu attention: run [", run[0],
                ", ", run[1], ") of ", tokens, " tokens");
      for (int64_t t0 = run[0]; t0 < run[1]; t0 += kChunk) {
        tasks.push_back({h, t0, std::min(run[1], t0 + kChunk)});
      }
    }
    KVB_CHECK(tasks.size() > first[h], "cpu attention: no tokens to read for KV head ", h);
  }
  first[kv_heads] = tasks.size();
  std::vector<Partial> partials(tasks.size());
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
  // Formats with integer key kernels read the query quantized to int8 blocks: once per step,
  // for every head (and the prefix query), before the parallel loop.
  const bool quantized = keys.quantized_query();
  struct Q8 {
    std::vector<int8_t> codes;
    std::vector<float> scales, dsums;
    void fill(const float* x, int64_t rows, int64_t n) {
      codes.resize(static_cast<size_t>(rows * n));
      scales.resize(static_cast<size_t>(rows * n / simd::kQ8Block));
      dsums.resize(scales.size());
      simd::quantize_q8(x, rows, n, codes.data(), scales.data(), dsums.data());
    }
    simd::Q8Rows at(int64_t row, int64_t n) const {  // from query row `row` on
      const int64_t b = row * n / simd::kQ8Block;
      return {codes.data() + row * n, scales.data() + b, dsums.data() + b};
    }
  } q8, pq8;
  if (quantized) {
    KVB_CHECK(dim % simd::kQ8Block == 0, "cpu attention: head_dim ", dim,
              " is not a multiple of the int8 query block ", simd::kQ8Block);
    q8.fill(qp, heads, dim);
    if (pq) pq8.fill(pq, heads, dim);
  }
  auto score = [&](int64_t h, bool prefix, int64_t a, int64_t b, float* out, int64_t stride) {
    if (quantized) {
      keys.dot_quantized(h, (prefix ? pq8 : q8).at(h * group, dim), group, a, b, out, stride);
    } else {
      keys.dot(h, (prefix ? pq : qp) + h * group * dim, group, a, b, out, stride);
    }
  };

  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p;
    for (int64_t i = begin; i < end; ++i) {
      const Task& task = tasks[static_cast<size_t>(i)];
      const int64_t h = task.head, t0 = task.t0, t1 = task.t1, len = t1 - t0;
      Partial& part = partials[static_cast<size_t>(i)];
      // every score is written before it is read: no zero fill
      if (p.size() < static_cast<size_t>(group * len)) p.resize(static_cast<size_t>(group * len));
      // Tokens before prefix_tokens are scored with the prefix query, the rest with q.
      const int64_t split = std::min(std::max(prefix_tokens, t0), t1);
      if (split > t0) score(h, true, t0, split, p.data(), len);
      if (t1 > split) score(h, false, split, t1, p.data() + (split - t0), len);
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
      for (size_t c = first[h]; c < first[h + 1]; ++c) m = std::max(m, partials[c].max[r]);
      float denom = 0;
      float* o = op + (h * group + r) * dim;
      for (size_t c = first[h]; c < first[h + 1]; ++c) {
        const Partial& part = partials[c];
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
