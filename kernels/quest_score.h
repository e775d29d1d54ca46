// Quest's page scores on the paged path (methods.md, Quest): per sequence, KV head and page,
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

}  // namespace kvbench::kernels
