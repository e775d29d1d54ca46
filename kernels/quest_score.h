// Quest's page bounds on the paged path (methods.md, Quest): a decode step's keys folded into
// them (QuestFoldProblem, below) and the pages scored. Per sequence, KV head and page,
// the upper bound U = sum_d pos_d * max_d + neg_d * min_d of a query's dot product with the
// page's keys, where (min, max) are the page's per-channel key bounds and pos / neg the means
// of the positive and negative parts of the KV head's query group (QuestPolicy's rule), taken
// from the model's queries as they come (no operator converts, splits or gathers them).
//
// Each sequence's bounds are its own allocations ([pages, kv_heads, head_dim] fp16 minimums
// and maximums, grown as it grows), reached through arrays of pointers, so a decode step
// reads every bound once: the torch formulation concatenated them, converted them to fp32 and
// multiplied them by gathered query parts, about seven passes over the bounds' size.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kv_encode.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace kvbench::kernels {

enum class QuestQuery { kFp32, kFp16, kBf16 };

struct QuestScoreProblem {
  int batch = 0, kv_heads = 0, head_dim = 0;
  int most = 0;                           // out's last dimension, >= every page count
  const uint16_t* const* mins = nullptr;  // [batch] -> [pages[b], kv_heads, head_dim] fp16
  const uint16_t* const* maxs = nullptr;  // [batch] -> [pages[b], kv_heads, head_dim] fp16
  const int64_t* pages = nullptr;         // [batch] pages each sequence has
  // The queries, [rows, kv_heads * group, head_dim] in the model's dtype; sequence b's is row
  // rows[b]. The KV head's query group gives its parts (quest_query_parts).
  const void* q = nullptr;
  QuestQuery q_format = QuestQuery::kFp32;
  int group = 0;                  // query heads per KV head
  const int64_t* rows = nullptr;  // [batch]
  float* out = nullptr;           // [batch, kv_heads, most]; 0 past a page count
};

// Checks what can be checked without reading device memory; "" when the problem is valid.
inline const char* quest_score_check(const QuestScoreProblem& p) {
  if (p.batch < 1 || p.kv_heads < 1 || p.head_dim < 1 || p.most < 1)
    return "batch, kv_heads, head_dim and most must be positive";
  if (p.batch > 65535) return "at most 65535 sequences (a grid's y)";
  if (p.group < 1) return "group must be positive";
  if (!p.mins || !p.maxs || !p.pages || !p.q || !p.rows || !p.out)
    return "a required pointer is null";
  return "";
}

// fp16 bits as a float: one conversion instruction on the device, integer decoding on the host
// (both exact).
KVB_HD float quest_half(uint16_t bits) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(bits));
#else
  return encode::half_value(bits);
#endif
}

// Element i of the queries as a float (exact for every format).
KVB_HD float quest_query_value(const QuestScoreProblem& p, size_t i) {
  if (p.q_format == QuestQuery::kFp32) return static_cast<const float*>(p.q)[i];
  const uint16_t bits = static_cast<const uint16_t*>(p.q)[i];
  return p.q_format == QuestQuery::kFp16 ? quest_half(bits)
                                         : encode::bits_float(uint32_t(bits) << 16);
}

// Channel d of the mean positive and negative parts of sequence b's query group h: torch's
// clamp_min(0).mean / clamp_max(0).mean as the CPU computes them (a sum in group order over the
// group size; a NaN carried; CUDA's mean multiplies by 1 / size instead, which can differ by an
// ulp).
KVB_HD void quest_query_parts(const QuestScoreProblem& p, int b, int h, int d, float& pos,
                              float& neg) {
  const size_t first = (size_t(p.rows[b]) * p.kv_heads + h) * p.group * p.head_dim + d;
  float sp = 0.f, sn = 0.f;
  for (int g = 0; g < p.group; ++g) {
    const float x = quest_query_value(p, first + size_t(g) * p.head_dim);
    sp += x < 0.f ? 0.f : x;
    sn += x > 0.f ? 0.f : x;
  }
  pos = sp / float(p.group), neg = sn / float(p.group);
}

// U of one (sequence, KV head, page) over channels d0, d0 + stride, ...: what a lane sums.
KVB_HD float quest_page_partial(const QuestScoreProblem& p, int b, int h, int page, int d0,
                                int stride) {
  const size_t row = (size_t(page) * p.kv_heads + h) * p.head_dim;
  const uint16_t* lo = p.mins[b] + row;
  const uint16_t* hi = p.maxs[b] + row;
  float u = 0.f;
  for (int d = d0; d < p.head_dim; d += stride) {
    float pos, neg;
    quest_query_parts(p, b, h, d, pos, neg);
    u = fmaf(neg, quest_half(lo[d]), fmaf(pos, quest_half(hi[d]), u));
  }
  return u;
}

// The reference loop (every channel in order).
inline void quest_score_host(const QuestScoreProblem& p) {
  for (int b = 0; b < p.batch; ++b)
    for (int h = 0; h < p.kv_heads; ++h)
      for (int page = 0; page < p.most; ++page)
        p.out[(size_t(b) * p.kv_heads + h) * p.most + page] =
            page < p.pages[b] ? quest_page_partial(p, b, h, page, 0, 1) : 0.f;
}

// A decode step's new keys folded into their pages' bounds: for sequence b and element e of
// its [kv_heads, head_dim] key, mins[b][page[b]][e] = min(itself, key rounded down to fp16),
// maxs likewise with the key rounded up, so the fp16 bounds hold every key they cover (as
// QuestPolicy's half_bounds rounds them). One thread per element; each sequence's page is
// its own row, so no two threads write one bound.
struct QuestFoldProblem {
  int batch = 0, kv_heads = 0, head_dim = 0;
  uint16_t* const* mins = nullptr;  // [batch] -> [pages, kv_heads, head_dim] fp16
  uint16_t* const* maxs = nullptr;  // [batch] -> [pages, kv_heads, head_dim] fp16
  const int64_t* page = nullptr;    // [batch] the page each sequence's new key falls in
  const float* keys = nullptr;      // [batch, kv_heads, head_dim]
};

inline const char* quest_fold_check(const QuestFoldProblem& p) {
  if (p.batch < 1 || p.kv_heads < 1 || p.head_dim < 1)
    return "batch, kv_heads and head_dim must be positive";
  if (p.batch > 65535) return "at most 65535 sequences (a grid's y)";
  if (!p.mins || !p.maxs || !p.page || !p.keys) return "a required pointer is null";
  return "";
}

// x rounded to an fp16 value on one side of it: the nearest fp16, stepped one unit when it
// lies on the wrong side (towards -inf when `down`). The same steps as half_bounds(), so the
// bits agree; from zero the step is the smallest subnormal of the needed sign.
KVB_HD uint16_t quest_half_toward(float x, bool down) {
  const uint16_t h = encode::half_bits(x);
  const float back = encode::half_value(h);
  if (!(down ? back > x : back < x)) return h;  // already on the right side (or NaN)
  if ((h & 0x7fffu) == 0) return down ? uint16_t(0x8001u) : uint16_t(0x0001u);
  const bool negative = (h & 0x8000u) != 0;  // sign and magnitude: away from zero is +1
  return uint16_t(down == negative ? h + 1 : h - 1);
}

// Element e (of kv_heads * head_dim) of sequence b: what one thread does. A NaN key leaves the
// bounds as they were (torch's minimum would carry it into them), and of +0 and -0 the bound
// keeps the one it holds: neither changes a page's score.
KVB_HD void quest_fold_element(const QuestFoldProblem& p, int b, int e) {
  const size_t row = size_t(p.kv_heads) * p.head_dim;
  const float x = p.keys[size_t(b) * row + e];
  uint16_t* lo = p.mins[b] + size_t(p.page[b]) * row + e;
  uint16_t* hi = p.maxs[b] + size_t(p.page[b]) * row + e;
  const uint16_t down = quest_half_toward(x, true), up = quest_half_toward(x, false);
  if (encode::half_value(down) < encode::half_value(*lo)) *lo = down;
  if (encode::half_value(up) > encode::half_value(*hi)) *hi = up;
}

inline void quest_fold_host(const QuestFoldProblem& p) {
  for (int b = 0; b < p.batch; ++b)
    for (int e = 0; e < p.kv_heads * p.head_dim; ++e) quest_fold_element(p, b, e);
}

// The pages a decode step reads, chosen where the scores are: for sequence b and KV head h,
// the newest of its pages[b] pages (it holds the current token) and the read - 1 others with
// the highest scores, the earlier of equal ones, written as the tokens of those others in
// ascending page order: tokens[b][h][i * page_size + j] = page_i * page_size + j. These are
// the retained-index kernel's lists (the newest page, its tail, is read by every head), so a
// step's choice never leaves the device. QuestPolicy::select_pages' rule (a stable descending
// sort of the scores, then the chosen pages ascending), in one launch where the torch
// formulation took two sorts and a dozen operators. Orders as torch's sort does: a NaN above
// every number (NaNs among themselves by position), +0 and -0 equal.
struct QuestSelectProblem {
  int batch = 0, kv_heads = 0, most = 0;  // scores' dimensions
  int read = 0;                           // pages read per head, the newest included (>= 2)
  int page_size = 0;                      // tokens per page
  const float* scores = nullptr;          // [batch, kv_heads, most]
  const int64_t* pages = nullptr;         // [batch] pages each sequence has, read..most
  int32_t* tokens = nullptr;              // [batch, kv_heads, (read - 1) * page_size]
};

inline const char* quest_select_check(const QuestSelectProblem& p) {
  if (p.batch < 1 || p.kv_heads < 1 || p.most < 1 || p.page_size < 1)
    return "batch, kv_heads, most and page_size must be positive";
  if (p.read < 2 || p.read > p.most) return "read must be in [2, most]";
  if (p.batch > 65535) return "at most 65535 sequences (a grid's y)";
  if (int64_t(p.most) * p.page_size >= (int64_t{1} << 31)) return "2^31 tokens or more";
  if (!p.scores || !p.pages || !p.tokens) return "a required pointer is null";
  return "";
}

// A score as an unsigned key ordered as the scores are (torch's order: NaN highest, every NaN
// equal, -0 == +0): flipping the sign bit of a positive float, every bit of a negative one.
KVB_HD uint32_t quest_order_key(float x) {
  if (x != x) return 0xffffffffu;
  const uint32_t u = x == 0.f ? 0u : encode::float_bits(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Sequence b's candidates: its pages but the newest (at most `most` pages are scored).
KVB_HD int quest_select_candidates(const QuestSelectProblem& p, int b) {
  const int64_t have = p.pages[b] < p.most ? p.pages[b] : p.most;
  return int(have) - 1;
}

// The reference: a stable sort of the candidates by key, descending; the first read - 1,
// ascending. (A row with fewer candidates writes what it has; the cache never passes one.)
inline void quest_select_host(const QuestSelectProblem& p) {
  const int want = p.read - 1, P = p.page_size;
  for (int b = 0; b < p.batch; ++b)
    for (int h = 0; h < p.kv_heads; ++h) {
      const float* s = p.scores + (size_t(b) * p.kv_heads + h) * p.most;
      int32_t* out = p.tokens + (size_t(b) * p.kv_heads + h) * size_t(want) * P;
      std::vector<int> order(size_t(std::max(quest_select_candidates(p, b), 0)));
      for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
      std::stable_sort(order.begin(), order.end(),
                       [&](int x, int y) { return quest_order_key(s[x]) > quest_order_key(s[y]); });
      order.resize(std::min(order.size(), size_t(want)));
      std::sort(order.begin(), order.end());
      for (size_t i = 0; i < order.size(); ++i)
        for (int j = 0; j < P; ++j) out[i * P + j] = order[i] * P + j;
    }
}

}  // namespace kvbench::kernels
