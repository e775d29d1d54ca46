// The device code of kernels/gear_decode.cu: the split kernel (the tile rebuild of
// gear_rebuild.h, scores, online softmax, output sums) and the split merge. A header so that a
// CPU test runs exactly this code with emulated threads and warps
// (tests/unit/gear_rebuild_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or by a
// host compiler after the test defines KVB_GEAR_EMULATED and the names the emulation gives.
//

// Design. A block takes a split of one (sequence, KV head)'s tokens, 32 at a time (a tile never
// crosses a GEAR block, so it has one set of factors and one outlier list):
//   1. Rebuild (gear_rebuild.h): the tile's tokens, code * s + min + clamp(Q_i . P^T_c,
//      +-s/2) for keys and values (the exact buffer's rows as stored), into fp32 shared
//      tiles, then the outliers over them; a thread per channel at head_dim 64 and 128
//      (gear_split_kernel<D>), elements in turn at other sizes.
//   2. Scores: warp w takes query heads w, w + 4, a lane a token: q . k over head_dim from
//      shared memory (rows padded by one float, so the 32 lanes' rows fall in distinct banks).
//   3. Online softmax per head (warp max and sum), then the output accumulators, a thread per
//      (head, channel) pair held in registers, += p . v over the tile.
// The block writes (max, sum, sums) per query head; a second kernel merges the splits.
//
// Bytes: what GEAR stores (bits / 8 bytes per value, plus scales, factors and outliers) and
// nothing else: no reconstructed cache is written. The rebuild costs rank + 2 FMAs per value
// on CUDA cores; GEAR's bytes are few, so this kernel is not expected to reach the copy
// bandwidth the tensor-core kernels aim at (docs/perf-notes.md, GEAR on the GPU path).
#pragma once

#include <cmath>
#include <cstdint>

#include "gear_decode.h"
#include "gear_rebuild.h"

namespace kvbench::kernels::gear_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kGearThreads;
static_assert(kThreads == kWarps * 32, "four warps");
constexpr int kTile = kGearTile;
constexpr int kPitch = kGearMaxHeadDim + 1;
constexpr int kPairs = kGearMaxQPerKv * kGearMaxHeadDim / kThreads;  // accumulators per thread

struct Smem {
  float k[kTile][kPitch], v[kTile][kPitch];
  float q[kGearMaxQPerKv][kGearMaxHeadDim];
  float p[kGearMaxQPerKv][kTile];
  float m[kGearMaxQPerKv], l[kGearMaxQPerKv], corr[kGearMaxQPerKv];
};

__device__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// D: the head_dim the kernel is built for (64 or 128, rebuild_channels), or 0 for any
// (p.head_dim, rebuild).
template <int D>
__device__ __forceinline__ void split_body(const GearProblem& p, int tokens_per_split, int splits,
                                           float* ws) {
  __shared__ Smem sm;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int d = D > 0 ? D : p.head_dim, gq = p.q_heads / p.kv_heads, warp = threadIdx.x / 32,
            lane = threadIdx.x % 32;
  const GearSequence& s = p.seqs[b];
  const int T = p.seq_lens[b];
  const int begin = split * tokens_per_split, end = min(T, begin + tokens_per_split);
  for (int e = threadIdx.x; e < gq * d; e += kThreads)
    sm.q[e / d][e % d] = p.q[(size_t(b) * p.q_heads + h * gq) * d + e];
  if (threadIdx.x < gq) sm.m[threadIdx.x] = -INFINITY, sm.l[threadIdx.x] = 0.f;
  float acc[kPairs];
#pragma unroll
  for (int k = 0; k < kPairs; ++k) acc[k] = 0.f;
  __syncthreads();

  for (int t = begin; t < end;) {
    const int stop = gear_tile::tile_end(s, t, end), nt = stop - t;
    if constexpr (D > 0) {
      gear_tile::rebuild_channels<D>(p, s, h, t, nt, sm);
    } else {
      gear_tile::rebuild(p, s, h, t, nt, sm);
    }
    for (int e = threadIdx.x; e < gq * kTile; e += kThreads) {
      const int hq = e / kTile, i = e % kTile;
      float score = -INFINITY;
      if (i < nt) {
        float dot = 0.f;
        for (int c = 0; c < d; ++c) dot = fmaf(sm.q[hq][c], sm.k[i][c], dot);
        score = dot * p.softmax_scale;
      }
      sm.p[hq][i] = score;
    }
    __syncthreads();
    for (int hq = warp; hq < gq; hq += kWarps) {
      const float score = sm.p[hq][lane], m_old = sm.m[hq];
      const float m_new = fmaxf(m_old, warp_max(score));
      const float w = expf(score - m_new);
      const float sum = warp_sum(w);
      sm.p[hq][lane] = w;
      __syncwarp();
      if (lane == 0) {
        const float corr = expf(m_old - m_new);
        sm.corr[hq] = corr;
        sm.l[hq] = sm.l[hq] * corr + sum;
        sm.m[hq] = m_new;
      }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      const int e = threadIdx.x + k * kThreads;
      if (e < gq * d) {
        const int hq = e / d, c = e % d;
        float a = acc[k] * sm.corr[hq];
        for (int i = 0; i < nt; ++i) a = fmaf(sm.p[hq][i], sm.v[i][c], a);
        acc[k] = a;
      }
    }
    __syncthreads();
    t = stop;
  }

  // Partials of query head qh: [batch, q_heads, splits] x (max, sum, head_dim sums).
#pragma unroll
  for (int k = 0; k < kPairs; ++k) {
    const int e = threadIdx.x + k * kThreads;
    if (e < gq * d) {
      const int qh = h * gq + e / d;
      float* part = ws + ((size_t(b) * p.q_heads + qh) * splits + split) * (d + 2);
      part[2 + e % d] = acc[k];
    }
  }
  if (threadIdx.x < gq) {
    const int qh = h * gq + threadIdx.x;
    float* part = ws + ((size_t(b) * p.q_heads + qh) * splits + split) * (d + 2);
    part[0] = sm.m[threadIdx.x];
    part[1] = sm.l[threadIdx.x];
  }
}

// One block per (query head, sequence), a thread per channel: out = sum_s e^(m_s - M) o_s /
// sum_s e^(m_s - M) l_s. Empty splits have m = -inf and weigh nothing.
__device__ __forceinline__ void merge_body(const GearProblem& p, int splits, const float* ws) {
  const int qh = blockIdx.x, b = blockIdx.y, c = threadIdx.x, d = p.head_dim;
  const float* parts = ws + (size_t(b) * p.q_heads + qh) * splits * (d + 2);
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, parts[size_t(s) * (d + 2)]);
  float sum = 0.f, acc = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float* part = parts + size_t(s) * (d + 2);
    const float w = part[0] == -INFINITY ? 0.f : expf(part[0] - m);
    sum += w * part[1];
    acc += w * part[2 + c];
  }
  // sum > 0 unless the sequence held no token (seq_lens 0, which the cache never passes).
  p.out[(size_t(b) * p.q_heads + qh) * d + c] = sum > 0.f ? acc / sum : 0.f;
}

}  // namespace
}  // namespace kvbench::kernels::gear_device
