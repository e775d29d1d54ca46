#include "gear_decode_launcher.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

// Design. A block takes a split of one (sequence, KV head)'s tokens, 32 at a time (a tile never
// crosses a GEAR block, so it has one set of factors and one outlier list):
//   1. Rebuild: each thread takes elements (token, channel) of the tile and computes
//      code * s + min + clamp(Q_i . P^T_c, +-s/2) for keys and values (the exact buffer's rows
//      are read as stored), into fp32 shared tiles; then the outliers replace their elements
//      (keys: a thread per channel finds the channel's first outlier in the tile by binary
//      search over the block's rows, ascending in token; values: each token's list). At
//      head_dim 64 and 128 (gear_split_kernel<D>) a thread keeps one channel for the whole
//      tile (rebuild_channels): its value-group index and P^T column address are computed
//      once, 16-bit values convert in hardware, and nothing divides by a run-time head_dim.
//      The first version (any head_dim, `rebuild`, still the path of other sizes) spent ~740
//      instructions per (key, value) pair: run-time divisions, software fp16 conversions and
//      addresses recomputed per element (docs/perf-notes.md, first H200 run).
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

namespace kvbench::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
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

// A 16-bit value as stored (fp16 or bf16), converted by the hardware (exact either way, as
// gear::value16's bit arithmetic on the host).
__device__ __forceinline__ float value16(const GearProblem& p, uint16_t bits) {
  return p.bf16 ? __bfloat162float(__ushort_as_bfloat16(bits))
                : __half2float(__ushort_as_half(bits));
}

// gear::element for one side at code row `codes`, scale/min index `meta`, factor row `q`
// (rank values) and P^T column `pc` (rank values, head_dim apart).
template <int D>
__device__ __forceinline__ float rebuilt(const GearProblem& p, const GearSide& side,
                                         const uint8_t* codes, size_t meta, const uint16_t* q,
                                         const uint16_t* pc, int rank, int c) {
  const float step = value16(p, side.scales[meta]);
  float x = float(gear::code(codes, c, p.bits)) * step + value16(p, side.mins[meta]);
  if (rank > 0) {
    float l = 0.f;
    for (int j = 0; j < rank; ++j) l += value16(p, q[j]) * value16(p, pc[size_t(j) * D]);
    const float half = 0.5f * step;
    x += fminf(fmaxf(l, -half), half);
  }
  return x;
}

// The outliers of the tile's tokens [lo, lo + nt) of block b replace their rebuilt elements
// (after a barrier: the tiles are written).
__device__ void place_outliers(const GearProblem& p, const GearBlock& b, int h, int lo, int nt,
                               int d, Smem& sm) {
  if (b.key_k > 0) {
    const int32_t* index = gear::key_outlier_index(p, b, h);
    const uint16_t* values = gear::key_outlier_values(p, b, h);
    for (int c = threadIdx.x; c < d; c += kThreads) {
      for (int j = gear::first_key_outlier(p, b, index, c, lo); j < 2 * b.key_k; ++j) {
        const int i = index[size_t(j) * d + c] - lo;
        if (i >= nt) break;
        sm.k[i][c] = gear::value16(p, values[size_t(j) * d + c]);
      }
    }
  }
  const int per_token = 2 * p.value_k;
  for (int e = threadIdx.x; e < nt * per_token; e += kThreads) {
    const int i = e / per_token, j = e % per_token;
    sm.v[i][gear::value_outlier_index(p, b, h, lo + i)[j]] =
        gear::value16(p, gear::value_outlier_values(p, b, h, lo + i)[j]);
  }
}

// rebuild() at head_dim D (64 or 128): thread x keeps channel x mod D and takes every
// (kThreads / D)-th token of the tile from x / D on.
template <int D>
__device__ void rebuild_channels(const GearProblem& p, const GearSequence& s, int h, int t, int nt,
                                 Smem& sm) {
  static_assert(kThreads % D == 0, "whole channels per thread");
  constexpr int kRows = kThreads / D;
  const int c = threadIdx.x % D, first = threadIdx.x / D;
  if (t >= s.compressed) {
    for (int i = first; i < nt; i += kRows) {
      const size_t at = size_t(t + i - s.compressed) * s.exact_stride + size_t(h) * D + c;
      sm.k[i][c] = value16(p, s.exact_k[at]);
      sm.v[i][c] = value16(p, s.exact_v[at]);
    }
    __syncthreads();
    return;
  }
  const GearBlock& b = s.blocks[gear::block_of(s, t)];
  const int lo = t - b.start, rank = b.rank;
  const size_t bytes = size_t(D * p.bits / 8);
  const int key_groups = (b.n + p.key_group - 1) / p.key_group;
  const int value_groups = D / p.value_group, value_group = c / p.value_group;
  const uint16_t* key_p = rank > 0 ? b.key.p + size_t(h) * rank * D + c : nullptr;
  const uint16_t* value_p = rank > 0 ? b.value.p + size_t(h) * rank * D + c : nullptr;
  for (int i = first; i < nt; i += kRows) {
    const size_t row = size_t(h) * b.n + size_t(lo + i);  // the token's row in the block
    const size_t key_meta = (size_t(h) * key_groups + size_t((lo + i) / p.key_group)) * D + c;
    const uint16_t* key_q = rank > 0 ? b.key.q + row * rank : nullptr;
    const uint16_t* value_q = rank > 0 ? b.value.q + row * rank : nullptr;
    sm.k[i][c] = rebuilt<D>(p, b.key, b.key.codes + row * bytes, key_meta, key_q, key_p, rank, c);
    sm.v[i][c] = rebuilt<D>(p, b.value, b.value.codes + row * bytes,
                            row * value_groups + value_group, value_q, value_p, rank, c);
  }
  __syncthreads();
  place_outliers(p, b, h, lo, nt, D, sm);
  __syncthreads();
}

// Tokens [t, t + nt) of sequence s at KV head h into the shared tiles.
__device__ void rebuild(const GearProblem& p, const GearSequence& s, int h, int t, int nt,
                        Smem& sm) {
  const int d = p.head_dim;
  if (t >= s.compressed) {
    for (int e = threadIdx.x; e < nt * d; e += kThreads) {
      const int i = e / d, c = e % d;
      const size_t at = size_t(t + i - s.compressed) * s.exact_stride + size_t(h) * d + c;
      sm.k[i][c] = gear::value16(p, s.exact_k[at]);
      sm.v[i][c] = gear::value16(p, s.exact_v[at]);
    }
    __syncthreads();
    return;
  }
  const GearBlock& b = s.blocks[gear::block_of(s, t)];
  const int lo = t - b.start;
  for (int e = threadIdx.x; e < nt * d; e += kThreads) {
    const int i = e / d, c = e % d;
    sm.k[i][c] = gear::element(p, b, true, h, lo + i, c);
    sm.v[i][c] = gear::element(p, b, false, h, lo + i, c);
  }
  __syncthreads();
  place_outliers(p, b, h, lo, nt, d, sm);
  __syncthreads();
}

// D: the head_dim the kernel is built for (64 or 128, rebuild_channels), or 0 for any
// (p.head_dim, rebuild).
template <int D>
__global__ void __launch_bounds__(kThreads)
    gear_split_kernel(const GearProblem p, int tokens_per_split, int splits, float* ws) {
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
    int stop = min(end, t + kTile);
    if (t < s.compressed) {
      const GearBlock& blk = s.blocks[gear::block_of(s, t)];
      stop = min(stop, blk.start + blk.n);
    }
    const int nt = stop - t;
    if constexpr (D > 0) {
      rebuild_channels<D>(p, s, h, t, nt, sm);
    } else {
      rebuild(p, s, h, t, nt, sm);
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
__global__ void gear_merge_kernel(const GearProblem p, int splits, const float* ws) {
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

cudaError_t gear_plan(const GearProblem& p, int max_len, int sm_count, GearPlan* plan) {
  if (plan == nullptr || gear_check(p)[0] != '\0' || max_len < 1 || sm_count < 1)
    return cudaErrorInvalidValue;
  // About four blocks per SM in all, each with at least four tiles.
  const int tiles = (max_len + kTile - 1) / kTile, blocks = p.batch * p.kv_heads;
  const int wanted = std::max(1, (4 * sm_count + blocks - 1) / blocks);
  const int splits = std::min(wanted, std::max(1, tiles / 4));
  const int per = (tiles + splits - 1) / splits;
  plan->tokens_per_split = per * kTile;
  plan->splits = (tiles + per - 1) / per;
  plan->workspace_bytes = size_t(p.batch) * p.q_heads * plan->splits * (p.head_dim + 2) * 4;
  return cudaSuccess;
}

cudaError_t gear_decode(const GearProblem& p, const GearPlan& plan, void* workspace,
                        cudaStream_t stream) {
  if (gear_check(p)[0] != '\0' || plan.splits < 1 || plan.tokens_per_split < 1 ||
      workspace == nullptr)
    return cudaErrorInvalidValue;
  float* ws = static_cast<float*>(workspace);
  const dim3 grid(plan.splits, p.kv_heads, p.batch);
  if (p.head_dim == 128) {
    gear_split_kernel<128>
        <<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  } else if (p.head_dim == 64) {
    gear_split_kernel<64><<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  } else {
    gear_split_kernel<0><<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  }
  gear_merge_kernel<<<dim3(p.q_heads, p.batch), p.head_dim, 0, stream>>>(p, plan.splits, ws);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
