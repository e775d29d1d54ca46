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
#include <string>
#include <utility>
#include <vector>

#include "kv_encode.h"
#include "quest_score.h"

namespace kvbench::gpu_test {

// Scoring: 4 sequences of 1, 513, 6 and 37 pages (from one to past a block's four warps),
// padded to 513, random fp16 bounds (min <= max), and 5 rows of queries (3 query heads per KV
// head) of which the sequences take rows 3, 0, 4 and 1, in fp32 and as fp16 and bf16 bits.
// head_dim 16 leaves half the lanes without a channel, 40 some with one.
struct QuestScoreCase {
  static constexpr int B = 4, H = 8, G = 3, R = 5, most = 513;
  int D;
  std::vector<int64_t> pages = {1, 513, 6, 37}, rows = {3, 0, 4, 1};
  std::vector<std::vector<uint16_t>> lo, hi;
  std::vector<float> q;                           // [R, H * G, D]
  std::vector<uint16_t> q16, qbf16;               // q rounded to fp16 and to bf16
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
    for (int64_t i = 0; i < int64_t(R) * H * G * D; ++i) {
      q.push_back(normal(rng));
      q16.push_back(kernels::encode::half_bits(q.back()));
      qbf16.push_back(uint16_t(kernels::encode::float_bits(q.back()) >> 16));  // truncated
    }
  }
  // The problem over the host arrays (the queries in `format`), scores into `out` ([B, H, most]).
  kernels::QuestScoreProblem problem(
      float* out, kernels::QuestQuery format = kernels::QuestQuery::kFp32) const {
    kernels::QuestScoreProblem p;
    p.batch = B, p.kv_heads = H, p.head_dim = D, p.most = most;
    p.mins = lo_ptrs.data(), p.maxs = hi_ptrs.data(), p.pages = pages.data();
    p.q = format == kernels::QuestQuery::kFp32   ? static_cast<const void*>(q.data())
          : format == kernels::QuestQuery::kFp16 ? static_cast<const void*>(q16.data())
                                                 : static_cast<const void*>(qbf16.data());
    p.q_format = format, p.group = G, p.rows = rows.data(), p.out = out;
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

// Choosing: 6 sequences (the first two at exactly `read` and read + 1 pages, the others up to
// 3001: runs of 12 candidates per thread of a 256-thread block), 3 KV heads, scores on a
// coarse grid (many equal ones), with ±0 and, unless `finite`, NaN and ±infinity among them.
// Each row's newest page and its padding are NaN: read as a candidate, either would rank first.
// The choice's cases: one page chosen beside the newest, 8, and 63 of one token each; with
// NaN and infinite scores or without.
struct QuestSelectShape {
  int read, page_size;
  bool finite;
  std::string label() const {
    return "read " + std::to_string(read) + ", page size " + std::to_string(page_size) +
           (finite ? ", finite" : ", NaN and infinities");
  }
};
inline std::vector<QuestSelectShape> quest_select_shapes() {
  std::vector<QuestSelectShape> out;
  for (const auto& [read, P] : {std::pair{2, 16}, std::pair{9, 16}, std::pair{64, 1}})
    for (bool finite : {true, false}) out.push_back({read, P, finite});
  return out;
}

struct QuestSelectCase {
  static constexpr int B = 6, H = 3;
  int read, P, most;
  std::vector<int64_t> pages;
  std::vector<float> scores;  // [B, H, most]

  QuestSelectCase(int read_pages, int page_size, bool finite, uint32_t seed)
      : read(read_pages), P(page_size) {
    pages = {read, read + 1, 700, 40 + read, 3001, read + 300};
    most = int(*std::max_element(pages.begin(), pages.end()));
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    scores.assign(size_t(B) * H * most, NAN);
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int64_t i = 0; i + 1 < pages[b]; ++i) {
          const uint32_t r = rng() % 32;
          float x = std::round(normal(rng) * 4.f) / 4.f;
          if (r == 0) x = 0.f;
          if (r == 1) x = -0.f;
          if (!finite && r == 2) x = NAN;
          if (!finite && r == 3) x = INFINITY;
          if (r == 4) x = finite ? -1e30f : -INFINITY;
          scores[(size_t(b) * H + h) * most + i] = x;
        }
  }
  size_t tokens() const { return size_t(B) * H * (read - 1) * P; }
  kernels::QuestSelectProblem problem(const float* s, const int64_t* page_counts,
                                      int32_t* out) const {
    kernels::QuestSelectProblem p;
    p.batch = B, p.kv_heads = H, p.most = most, p.read = read, p.page_size = P;
    p.scores = s, p.pages = page_counts, p.tokens = out;
    return p;
  }
};

}  // namespace kvbench::gpu_test
