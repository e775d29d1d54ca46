// The device code of kernels/quest_score.cu (the bodies of its two kernels). A header so that
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

}  // namespace
}  // namespace kvbench::kernels::quest_device
