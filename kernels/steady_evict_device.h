// The device code of kernels/steady_evict.cu (its design is in steady_evict.h): the body of its
// one kernel. A header so that a CPU test runs exactly this code with emulated threads and
// barriers (tests/unit/steady_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by
// nvcc, or by a host compiler that defines KVB_KERNEL_EMULATED and the names the emulation
// gives.
#pragma once

#include "steady_evict.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "steady_evict_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::steady_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Block (e, y): record e, KV heads [y * per, (y + 1) * per) with per = steady_heads_per_block.
//   1. a warp per query head: max, then the sum of exp(l - max), reduced with shuffles;
//   2. a thread per token: its score by the rule, into the workspace (the new state's values);
//   3. the lowest of the first count + 1, the later of equal ones: each thread's best of its
//      tokens, then a tree over shared memory;
//   4. a thread per output element: the list, the state (kSummed: the workspace's values;
//      kLowCounts: the flags recomputed by the same expression), shifted past the dropped.
// Global writes of step 2 are read by other threads of the block after a barrier, which
// orders them within the block.
__device__ __forceinline__ void evict_body(const SteadyEvictProblem& p) {
  __shared__ float stat_max[kSteadyMaxQueryHeads], stat_inv[kSteadyMaxQueryHeads];
  __shared__ float best_score[kThreads];
  __shared__ int best_index[kThreads];
  const int e = blockIdx.x, per = steady_heads_per_block(p), h0 = blockIdx.y * per;
  const int t = threadIdx.x, G = p.group, T = p.held, warp = t / 32, lane = t % 32;
  const int column = p.rule == SteadyRule::kLowCounts ? steady_column(p, e) : 0;
  // 1. Query heads h0 * G .. (h0 + per) * G, local index k.
  for (int k = warp; k < per * G; k += kWarps) {
    const int q = h0 * G + k;
    float mx = -INFINITY;
    for (int j = lane; j < T; j += 32) mx = fmaxf(mx, steady_logit(p, e, q, j));
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int j = lane; j < T; j += 32) sum += expf(steady_logit(p, e, q, j) - mx);
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) stat_max[k] = mx, stat_inv[k] = 1.f / sum;
  }
  __syncthreads();
  auto prob = [&](int h, int g, int j) {
    const int k = (h - h0) * G + g;
    return steady_prob(p, e, h * G + g, j, stat_max[k], stat_inv[k]);
  };
  // 2. The scores of the block's first head (TOVA's hold for all its heads).
  float* scores = p.scores + (int64_t(e) * p.kv_heads + h0) * T;
  for (int j = t; j < T; j += kThreads) {
    float s = 0.f;
    if (p.rule == SteadyRule::kLowCounts) {
      int flags = 0;
      for (int g = 0; g < G; ++g) {
        const float pr = prob(h0, g, j);
        for (int w = 0; w < p.window; ++w) flags += steady_low_flag(p, e, h0, j, g, w, pr, column);
      }
      s = -float(flags) / float(G);
    } else if (p.rule == SteadyRule::kSummed) {
      for (int g = 0; g < G; ++g) s += prob(h0, g, j);
      s /= float(G);
      if (j < T - 1) s += p.summed[(int64_t(e) * p.kv_heads + h0) * (T - 1) + j];
    } else {
      for (int h = h0; h < h0 + per; ++h) {
        float head_sum = 0.f;
        for (int g = 0; g < G; ++g) head_sum += prob(h, g, j);
        s += head_sum / float(G);
      }
      s /= float(per);
    }
    scores[j] = s;
  }
  __syncthreads();
  // 3. The dropped index: lowest score, the later of equal ones; a NaN ranks above every
  // finite score (none but NaNs: the last candidate), as in torch's sort.
  float bs = INFINITY;
  int bi = -1;
  for (int j = t; j <= p.count; j += kThreads) {
    const float s = scores[j] != scores[j] ? INFINITY : scores[j];  // NaN: above all
    if (s <= bs) bs = s, bi = j;  // ascending j: ties to the later
  }
  best_score[t] = bs, best_index[t] = bi;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (t < half) {
      const float s = best_score[t + half];
      const int i = best_index[t + half];
      if (i >= 0 &&
          (s < best_score[t] || (s == best_score[t] && i > best_index[t]) || best_index[t] < 0))
        best_score[t] = s, best_index[t] = i;
    }
    __syncthreads();
  }
  const int d = best_index[0];  // thread 0 holds candidate 0: never -1
  // 4. Every head of the block: its list and state without token d.
  for (int h = h0; h < h0 + per; ++h) {
    const int64_t at = int64_t(e) * p.kv_heads + h;
    if (t == 0) p.dropped[at] = d;
    for (int i = t; i < p.count; i += kThreads)
      p.lists_out[at * p.count + i] = steady_list_entry(p, e, h, i, d);
    if (p.rule == SteadyRule::kSummed)
      for (int j = t; j < T - 1; j += kThreads)
        p.summed_out[at * (T - 1) + j] = scores[j < d ? j : j + 1];
    if (p.rule == SteadyRule::kLowCounts) {
      const int row = G * p.window;
      for (int x = t; x < (T - 1) * row; x += kThreads) {
        const int j = x / row, g = (x % row) / p.window, w = x % p.window;
        const int src = j < d ? j : j + 1;
        p.low_out[at * (T - 1) * row + x] =
            steady_low_flag(p, e, h, src, g, w, prob(h, g, src), column);
      }
    }
  }
}

}  // namespace
}  // namespace kvbench::kernels::steady_device
