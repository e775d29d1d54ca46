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
#include "sixteen_bit.h"

namespace kvbench::gpu_test {

struct RetainedCase {
  HostPagedCache cache;
  std::vector<int> rows;  // seq_rows (the reverse of the batch order)
  int q_heads = 0;
  // Per sequence: its listed positions [kv_heads, count] (random, any order, below the tail),
  // their count and the start of its kept tail.
  std::vector<std::vector<int>> lists;
  std::vector<int> counts, tails;
  std::vector<float> q;      // [batch, q_heads, head_dim]
  std::vector<double> want;  // [batch, q_heads, head_dim]
  // Per (sequence, query head), b * q_heads + qh: the scaled score of each kept token, in the
  // kernel's order (listed, then the tail).
  std::vector<std::vector<double>> want_scores;
  int max_kept = 0;
  float scale = 0.f;
  mutable std::vector<const int*> list_ptrs;

  // The problem over host pointers; tests swap in device ones where they need them.
  kernels::RetainedProblem problem(float* out) const {
    list_ptrs.clear();
    for (const auto& l : lists) list_ptrs.push_back(l.empty() ? nullptr : l.data());
    kernels::RetainedProblem p;
    p.batch = cache.batch, p.q_heads = q_heads, p.kv_heads = cache.kv_heads;
    p.head_dim = cache.head_dim, p.max_pages_per_seq = cache.max_pages;
    p.block_table = cache.block_table.data(), p.seq_lens = cache.seq_lens.data();
    p.seq_rows = rows.data(), p.kept_lists = list_ptrs.data();
    p.kept_counts = counts.data(), p.tail_start = tails.data();
    p.softmax_scale = scale, p.q = q.data(), p.out = out;
    return p;
  }
};

// Sequence b keeps a tail of `tail_len[b % size]` tokens (all of them where that is -1: nothing
// evicted) and, per KV head, a random `fraction` of the tokens before it, shuffled; page
// boundaries fall in both parts.
inline RetainedCase retained_case(const AppendCase& c, const std::vector<int>& lens, int kv_heads,
                                  int group, double fraction, uint32_t seed,
                                  const std::vector<int>& tail_len = {17, 0, 64, -1}) {
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
  std::vector<std::vector<std::vector<int>>> kept(lens.size());  // [b][h] positions
  for (size_t b = 0; b < lens.size(); ++b) {
    const int T = lens[b], want_tail = tail_len[b % tail_len.size()];
    const int tail = want_tail < 0 ? 0 : std::max(0, T - want_tail);
    int count = want_tail < 0 ? 0 : int(tail * fraction);
    if (tail == T) count = std::max(count, 1);  // at least one token kept
    r.tails.push_back(tail);
    r.counts.push_back(count);
    r.lists.emplace_back();
    for (int h = 0; h < kv_heads; ++h) {
      std::vector<int> all(tail);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      all.resize(count);
      r.lists.back().insert(r.lists.back().end(), all.begin(), all.end());
      kept[b].push_back(all);
      for (int t = tail; t < T; ++t) kept[b].back().push_back(t);
    }
  }
  std::normal_distribution<float> normal;
  r.q.resize(size_t(lens.size()) * r.q_heads * D);
  for (float& v : r.q) v = normal(rng);
  // float64 softmax attention over the kept tokens' decoded values.
  for (int b = 0; b < int(lens.size()); ++b)
    for (int qh = 0; qh < r.q_heads; ++qh) {
      const int h = qh / group;
      const std::vector<int>& idx = kept[b][h];
      const float* q = r.q.data() + (size_t(b) * r.q_heads + qh) * D;
      std::vector<double> s;
      for (int t : idx) {
        const float* k = r.cache.k_decoded[b].data() + (size_t(h) * lens[b] + t) * D;
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += double(q[d]) * k[d];
        s.push_back(dot * r.scale);
      }
      r.want_scores.push_back(s);
      r.max_kept = std::max(r.max_kept, int(s.size()));
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

// Switches `p` to 16-bit queries `q16` and outputs `out16`.
inline void use_16_bit(kernels::RetainedProblem& p, const uint16_t* q16, uint16_t* out16,
                       bool bf16) {
  p.q = nullptr, p.out = nullptr;
  p.q16 = q16, p.out16 = out16, p.bf16_io = bf16;
}

}  // namespace kvbench::gpu_test
