// Quest's page bounds on the paged path (methods.md, Quest): a decode step's keys folded into
// them (QuestFoldProblem, below) and the pages scored. Per sequence, KV head and page,
// the upper bound U = sum_d pos_d * max_d + neg_d * min_d of a query's dot product with the
// page's keys, where (min, max) are the page's per-channel key bounds and pos / neg the means
// of the positive and negative parts of the KV head's query group (QuestPolicy's rule).
//
// Each sequence's bounds are its own allocations ([pages, kv_heads, head_dim] fp16 minimums
// and maximums, grown as it grows), reached through arrays of pointers, so a decode step
// reads every bound once: the torch formulation concatenated them, converted them to fp32 and
// multiplied them by gathered query parts, about seven passes over the bounds' size.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kv_encode.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace kvbench::kernels {

struct QuestScoreProblem {
  int batch = 0, kv_heads = 0, head_dim = 0;
  int most = 0;                           // out's last dimension, >= every page count
  const uint16_t* const* mins = nullptr;  // [batch] -> [pages[b], kv_heads, head_dim] fp16
  const uint16_t* const* maxs = nullptr;  // [batch] -> [pages[b], kv_heads, head_dim] fp16
  const int64_t* pages = nullptr;         // [batch] pages each sequence has
  const float* pos = nullptr;             // [batch, kv_heads, head_dim]
  const float* neg = nullptr;             // [batch, kv_heads, head_dim]
  float* out = nullptr;                   // [batch, kv_heads, most]; 0 past a page count
};

// Checks what can be checked without reading device memory; "" when the problem is valid.
inline const char* quest_score_check(const QuestScoreProblem& p) {
  if (p.batch < 1 || p.kv_heads < 1 || p.head_dim < 1 || p.most < 1)
    return "batch, kv_heads, head_dim and most must be positive";
  if (p.batch > 65535) return "at most 65535 sequences (a grid's y)";
  if (!p.mins || !p.maxs || !p.pages || !p.pos || !p.neg || !p.out)
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

// U of one (sequence, KV head, page) over channels d0, d0 + stride, ...: what a lane sums.
KVB_HD float quest_page_partial(const QuestScoreProblem& p, int b, int h, int page, int d0,
                                int stride) {
  const size_t row = (size_t(page) * p.kv_heads + h) * p.head_dim;
  const uint16_t* lo = p.mins[b] + row;
  const uint16_t* hi = p.maxs[b] + row;
  const float* pos = p.pos + (size_t(b) * p.kv_heads + h) * p.head_dim;
  const float* neg = p.neg + (size_t(b) * p.kv_heads + h) * p.head_dim;
  float u = 0.f;
  for (int d = d0; d < p.head_dim; d += stride)
    u = fmaf(neg[d], quest_half(lo[d]), fmaf(pos[d], quest_half(hi[d]), u));
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

}  // namespace kvbench::kernels
