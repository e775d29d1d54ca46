// A retained-index decode problem for the tests of kernels/retained_decode.h: a paged cache
// built by the independent builder (every format), a random subset of each (sequence, KV
// head)'s tokens in random order (page and window boundaries and the last token included),
// random queries, and the answer in float64 from the builder's decoded values. Host-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "append_schedule.h"
#include "paged_cache_builder.h"
#include "retained_decode.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {

struct RetainedCase {
  HostPagedCache cache;
  std::vector<int> rows;  // seq_rows (the reverse of the batch order)
  int q_heads = 0, max_kept = 0;
  std::vector<int> kept_index, kept_lens;  // [batch, kv_heads, max_kept], [batch, kv_heads]
  std::vector<float> q;                    // [batch, q_heads, head_dim]
  std::vector<double> want;                // [batch, q_heads, head_dim]
  float scale = 0.f;

  // The problem over host pointers; tests swap in device ones where they need them.
  kernels::RetainedProblem problem(float* out) const {
    kernels::RetainedProblem p;
    p.batch = cache.batch, p.q_heads = q_heads, p.kv_heads = cache.kv_heads;
    p.head_dim = cache.head_dim, p.max_pages_per_seq = cache.max_pages;
    p.block_table = cache.block_table.data(), p.seq_lens = cache.seq_lens.data();
    p.seq_rows = rows.data(), p.max_kept = max_kept;
    p.kept_index = kept_index.data(), p.kept_lens = kept_lens.data();
    p.softmax_scale = scale, p.q = q.data(), p.out = out;
    return p;
  }
};

// Keeps about `fraction` of each head's tokens (at least one), always including token 0, the
// last one and one on each side of a page boundary, shuffled.
inline std::vector<int> kept_positions(std::mt19937& rng, int T, int page, double fraction) {
  std::vector<int> all(T);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(std::max<size_t>(1, size_t(T * fraction)));
  for (int t : {0, T - 1, page - 1, page})
    if (t < T && std::find(all.begin(), all.end(), t) == all.end()) all.push_back(t);
  std::shuffle(all.begin(), all.end(), rng);
  return all;
}

inline RetainedCase retained_case(const AppendCase& c, const std::vector<int>& lens, int kv_heads,
                                  int group, double fraction, uint32_t seed) {
  std::mt19937 rng(seed);
  const int D = c.head_dim;
  const SequenceTokens x =
      rounded_tokens(rng, lens, kv_heads, D, c.format == kernels::KvFormat::kBf16);
  RetainedCase r;
  r.cache = build_paged_cache(c.format, kv_heads, D, c.page_size, c.residual, x.keys, x.values,
                              lens, rng);
  r.rows = reversed_rows(int(lens.size()));
  move_rows(r.cache, r.rows);
  r.q_heads = kv_heads * group;
  r.scale = 1.f / std::sqrt(float(D));
  std::vector<std::vector<int>> kept;
  for (int b = 0; b < int(lens.size()); ++b)
    for (int h = 0; h < kv_heads; ++h) {
      kept.push_back(kept_positions(rng, lens[b], c.page_size, fraction));
      r.max_kept = std::max(r.max_kept, int(kept.back().size()));
    }
  r.kept_index.assign(kept.size() * r.max_kept, -1);  // unused tail: an index never read
  for (size_t i = 0; i < kept.size(); ++i) {
    r.kept_lens.push_back(int(kept[i].size()));
    std::copy(kept[i].begin(), kept[i].end(), r.kept_index.begin() + i * r.max_kept);
  }
  std::normal_distribution<float> normal;
  r.q.resize(size_t(lens.size()) * r.q_heads * D);
  for (float& v : r.q) v = normal(rng);
  // float64 softmax attention over the kept tokens' decoded values.
  for (int b = 0; b < int(lens.size()); ++b)
    for (int qh = 0; qh < r.q_heads; ++qh) {
      const int h = qh / group;
      const std::vector<int>& idx = kept[size_t(b) * kv_heads + h];
      const float* q = r.q.data() + (size_t(b) * r.q_heads + qh) * D;
      std::vector<double> s;
      for (int t : idx) {
        const float* k = r.cache.k_decoded[b].data() + (size_t(h) * lens[b] + t) * D;
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += double(q[d]) * k[d];
        s.push_back(dot * r.scale);
      }
      const double m = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& v : s) sum += (v = std::exp(v - m));
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (size_t i = 0; i < idx.size(); ++i)
          acc += s[i] * r.cache.v_decoded[b][(size_t(h) * lens[b] + idx[i]) * D + d];
        r.want.push_back(acc / sum);
      }
    }
  return r;
}

}  // namespace kvbench::gpu_test
