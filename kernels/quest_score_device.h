// The device code of kernels/quest_score.cu (the bodies of its three kernels). A header so that
// a CPU test runs exactly this code with emulated threads and warps
// (tests/unit/quest_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or by
// a host compiler that defines KVB_KERNEL_EMULATED and the names the emulation gives.
#pragma once

#include "quest_score.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "quest_score_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::quest_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

constexpr int kWarps = 4;          // scoring: pages per block, a warp each
constexpr int kFoldThreads = 256;  // folding: elements per block

// Warp w of block (x, b) scores page 4x + w of sequence b for every KV head: the lanes read
// consecutive channels of a bound row (coalesced), sum their share and reduce with shuffles.
// The same arithmetic as quest_page_partial() over strided channels, in another order. A warp
// past the last page leaves whole, before any shuffle.
__device__ __forceinline__ void score_body(const QuestScoreProblem& p) {
  const int b = blockIdx.y, lane = threadIdx.x % 32;
  const int page = blockIdx.x * kWarps + threadIdx.x / 32;
  if (page >= p.most) return;
  const bool held = page < p.pages[b];
  for (int h = 0; h < p.kv_heads; ++h) {
    float u = held ? quest_page_partial(p, b, h, page, lane, 32) : 0.f;
    for (int o = 16; o > 0; o /= 2) u += __shfl_xor_sync(0xffffffffu, u, o);
    if (lane == 0) p.out[(size_t(b) * p.kv_heads + h) * p.most + page] = u;
  }
}

// Element blockIdx.x * blockDim.x + threadIdx.x of sequence blockIdx.y's new key.
__device__ __forceinline__ void fold_body(const QuestFoldProblem& p) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e < p.kv_heads * p.head_dim) quest_fold_element(p, blockIdx.y, e);
}

constexpr int kSelectThreads = 256;  // choosing: one block per (KV head, sequence)

// An exclusive prefix sum of one value per thread over the block (Hillis-Steele in `buf`,
// kSelectThreads entries); every thread must call it.
__device__ __forceinline__ int block_exclusive_sum(int v, int* buf) {
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int o = 1; o < kSelectThreads; o *= 2) {
    const int x = t >= o ? buf[t - o] : 0;
    __syncthreads();
    buf[t] += x;
    __syncthreads();
  }
  return buf[t] - v;  // a thread's own entry: the next call may write it at once
}

// Block (h, b) chooses head h's pages of sequence b (QuestSelectProblem):
//   1. the key K of the want-th highest candidate, 8 bits at a time from the top (a histogram
//      of the candidates that match the bits found so far), and how many candidates equal to
//      K are chosen (`take`: the earliest ones);
//   2. each thread walks a contiguous run of candidates: its count of those equal to K, then
//      (their prefix over the block giving each its rank among the equal ones) its count of
//      chosen ones, whose prefix is where its first chosen page's tokens go; then it writes
//      them. Ascending pages in ascending runs: the output is in page order.
__device__ __forceinline__ void select_body(const QuestSelectProblem& p) {
  __shared__ int hist[256];
  __shared__ int scan[kSelectThreads];
  __shared__ uint32_t found_key;
  __shared__ int found_take;
  const int b = blockIdx.y, h = blockIdx.x, t = threadIdx.x, P = p.page_size;
  const int m = quest_select_candidates(p, b);
  const int want = min(p.read - 1, m);
  if (want <= 0) return;  // the whole block: no barrier is passed
  const float* s = p.scores + (size_t(b) * p.kv_heads + h) * p.most;
  int32_t* out = p.tokens + (size_t(b) * p.kv_heads + h) * size_t(p.read - 1) * P;
  uint32_t key = 0, mask = 0;
  int take = want;  // rank from the top among the candidates matching key under mask
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = t; i < 256; i += kSelectThreads) hist[i] = 0;
    __syncthreads();
    for (int i = t; i < m; i += kSelectThreads) {
      const uint32_t u = quest_order_key(s[i]);
      if ((u & mask) == key) atomicAdd(&hist[(u >> shift) & 0xffu], 1);
    }
    __syncthreads();
    if (t == 0) {
      int above = 0, d = 255;
      for (; d > 0 && above + hist[d] < take; --d) above += hist[d];
      found_key = key | (uint32_t(d) << shift), found_take = take - above;
    }
    __syncthreads();
    key = found_key, take = found_take, mask |= 0xffu << shift;
  }
  const int per = (m + kSelectThreads - 1) / kSelectThreads;
  const int i0 = min(t * per, m), i1 = min(i0 + per, m);
  int ties = 0;
  for (int i = i0; i < i1; ++i) ties += quest_order_key(s[i]) == key;
  const int tie_base = block_exclusive_sum(ties, scan);
  auto chosen = [&](int i, int& tie_rank) {
    const uint32_t u = quest_order_key(s[i]);
    return u > key || (u == key && tie_rank++ < take);
  };
  int count = 0;
  for (int i = i0, r = tie_base; i < i1; ++i) count += chosen(i, r);
  int slot = block_exclusive_sum(count, scan);
  for (int i = i0, r = tie_base; i < i1; ++i)
    if (chosen(i, r)) {
      for (int j = 0; j < P; ++j) out[size_t(slot) * P + j] = i * P + j;
      ++slot;
    }
}

}  // namespace
}  // namespace kvbench::kernels::quest_device
