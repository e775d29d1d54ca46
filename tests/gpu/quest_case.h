// Random inputs of Quest's kernels (kernels/quest_score.h), shared by the CUDA kernels' test
// (tests/gpu/quest_score_test.cpp) and their emulation on the CPU
// (tests/unit/quest_emulation_test.cpp). Host arrays; each sequence's bounds their own
// allocation, as the paged cache keeps them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "kv_encode.h"
#include "quest_score.h"

namespace kvbench::gpu_test {

// Scoring: 4 sequences of 1, 513, 6 and 37 pages (from one to past a block's four warps),
// padded to 513, random fp16 bounds (min <= max), the query group's positive and negative
// means. head_dim 16 leaves half the lanes without a channel, 40 some with one.
struct QuestScoreCase {
  static constexpr int B = 4, H = 8, most = 513;
  int D;
  std::vector<int64_t> pages = {1, 513, 6, 37};
  std::vector<std::vector<uint16_t>> lo, hi;
  std::vector<float> pos, neg;
  std::vector<const uint16_t*> lo_ptrs, hi_ptrs;  // [B], into lo / hi

  QuestScoreCase(const QuestScoreCase&) = delete;  // lo_ptrs / hi_ptrs point into this one
  QuestScoreCase& operator=(const QuestScoreCase&) = delete;
  explicit QuestScoreCase(int head_dim) : D(head_dim), lo(B), hi(B) {
    std::mt19937 rng(9 + D);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int b = 0; b < B; ++b) {
      for (int64_t i = 0; i < pages[b] * H * D; ++i) {
        const float a = normal(rng), c = normal(rng);
        lo[b].push_back(kernels::encode::half_bits(std::min(a, c)));
        hi[b].push_back(kernels::encode::half_bits(std::max(a, c)));
      }
      lo_ptrs.push_back(lo[b].data()), hi_ptrs.push_back(hi[b].data());
    }
    pos.resize(size_t(B) * H * D), neg.resize(pos.size());
    for (size_t i = 0; i < pos.size(); ++i)
      pos[i] = std::abs(normal(rng)), neg[i] = -std::abs(normal(rng));
  }
  // The problem over the host arrays, scores into `out` ([B, H, most]).
  kernels::QuestScoreProblem problem(float* out) const {
    kernels::QuestScoreProblem p;
    p.batch = B, p.kv_heads = H, p.head_dim = D, p.most = most;
    p.mins = lo_ptrs.data(), p.maxs = hi_ptrs.data(), p.pages = pages.data();
    p.pos = pos.data(), p.neg = neg.data(), p.out = out;
    return p;
  }
};

// Folding: 5 sequences, each folding its new key into page `page[b]` of its `pages[b]`
// (empty pages as grown: +inf mins, -inf maxs); keys with NaN, infinities, fp16's largest
// values and the smallest subnormals among random ones of every scale.
struct QuestFoldCase {
  static constexpr int B = 5;
  int H, D, row;
  std::vector<int64_t> pages = {1, 7, 3, 40, 2}, page = {0, 6, 1, 39, 1};
  std::vector<std::vector<uint16_t>> lo, hi;
  std::vector<float> keys;

  QuestFoldCase(int kv_heads, int head_dim)
      : H(kv_heads), D(head_dim), row(kv_heads * head_dim), lo(B), hi(B) {
    std::mt19937 rng(21 + D);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int b = 0; b < B; ++b)
      for (int64_t i = 0; i < pages[b] * row; ++i) {
        const bool empty = i % 3 == 0;
        const float a = normal(rng), c = normal(rng);
        lo[b].push_back(empty ? 0x7c00u : kernels::encode::half_bits(std::min(a, c)));
        hi[b].push_back(empty ? 0xfc00u : kernels::encode::half_bits(std::max(a, c)));
      }
    keys.resize(size_t(B) * row);
    const float edges[] = {0.f,       -0.f,     1e-8f,    -1e-8f,    65519.f,
                           70000.f,   -70000.f, 65504.f,  -65520.f,  0x1p-25f,
                           -0x1p-25f, NAN,      INFINITY, -INFINITY, 1.00048828125f};
    const size_t n_edges = sizeof(edges) / sizeof(edges[0]);
    for (size_t i = 0; i < keys.size(); ++i)
      keys[i] = i % 97 < n_edges ? edges[i % 97] : std::ldexp(normal(rng), int(i % 23) - 12);
  }
  // The problem over bounds `mins` / `maxs` ([B] pointers) and the host keys and pages.
  kernels::QuestFoldProblem problem(uint16_t* const* mins, uint16_t* const* maxs) const {
    kernels::QuestFoldProblem p;
    p.batch = B, p.kv_heads = H, p.head_dim = D;
    p.mins = mins, p.maxs = maxs, p.page = page.data(), p.keys = keys.data();
    return p;
  }
};

}  // namespace kvbench::gpu_test
