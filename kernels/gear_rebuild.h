// GEAR's tile rebuild, the first phase of kernels/gear_decode.cu's split kernel: tokens
// [t, t + nt) of a sequence at one KV head, keys and values reconstructed into shared fp32
// tiles (`Tiles`: members k and v indexed [token][channel]) by a block of kGearThreads threads.
// A header of device code so that a CPU test runs exactly this code with emulated threads
// (tests/unit/gear_rebuild_test.cpp): compiled by nvcc, or by a host compiler after the test
// defines KVB_GEAR_EMULATED and CUDA's names it uses (threadIdx, __syncthreads, __device__,
// __forceinline__, __ushort_as_half, __half2float, __ushort_as_bfloat16, __bfloat162float).
//
// At head_dim 64 and 128 (rebuild_channels<D>) a thread keeps one channel for the whole tile:
// its value group, its P^T columns (in registers up to rank kHeldRank) and the tile's row
// addresses are computed once per tile or token, 16-bit values convert in hardware, and
// nothing divides by a run-time head_dim. The first version (`rebuild`, any head_dim, still
// the path of other sizes) spent ~740 instructions per (key, value) pair: run-time
// divisions, software fp16 conversions and addresses recomputed per element
// (docs/perf-notes.md, first H200 run). Either way the values are gear::element's and the
// outliers replace them (keys: a thread per channel finds the channel's first outlier in the
// tile by binary search over the block's rows, ascending in token; values: each token's list).
#pragma once

#include "gear_decode.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#elif !defined(KVB_GEAR_EMULATED)
#error "gear_rebuild.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::gear_tile {

// The end of the tile from token t of a split ending at `end`: kGearTile tokens, never past a
// GEAR block (a tile has one set of factors and one outlier list).
__device__ __forceinline__ int tile_end(const GearSequence& s, int t, int end) {
  int stop = end < t + kGearTile ? end : t + kGearTile;
  if (t < s.compressed) {
    const GearBlock& b = s.blocks[gear::block_of(s, t)];
    if (b.start + b.n < stop) stop = b.start + b.n;
  }
  return stop;
}

// A 16-bit value as stored (fp16 or bf16), converted by the hardware (exact either way, as
// gear::value16's bit arithmetic on the host).
__device__ __forceinline__ float value16(const GearProblem& p, uint16_t bits) {
  return p.bf16 ? __bfloat162float(__ushort_as_bfloat16(bits))
                : __half2float(__ushort_as_half(bits));
}

// Ranks up to this keep a thread's P^T column in registers for the whole tile (GEAR's
// defaults: 4 at the prefill, 2 in decode); larger ones read it per element.
constexpr int kHeldRank = 4;

// A P^T column: `held` its first kHeldRank values as fp32 (zero past the rank), `pc` all of
// them (rank values, head_dim apart).
struct Column {
  float held[kHeldRank];
  const uint16_t* pc;
};

// gear::element for one side at code row `codes`, scale/min index `meta`, factor row `q`
// (rank values) and P^T column `col`, summed in the same order.
template <int D>
__device__ __forceinline__ float rebuilt(const GearProblem& p, const GearSide& side,
                                         const uint8_t* codes, size_t meta, const uint16_t* q,
                                         const Column& col, int rank, int c) {
  const float step = value16(p, side.scales[meta]);
  float x = float(gear::code(codes, c, p.bits)) * step + value16(p, side.mins[meta]);
  if (rank > 0) {
    float l = 0.f;
    if (rank <= kHeldRank) {
#pragma unroll
      for (int j = 0; j < kHeldRank; ++j)
        if (j < rank) l += value16(p, q[j]) * col.held[j];
    } else {
      for (int j = 0; j < rank; ++j) l += value16(p, q[j]) * value16(p, col.pc[size_t(j) * D]);
    }
    const float half = 0.5f * fabsf(step);  // a constant group's step may be negative
    x += fminf(fmaxf(l, -half), half);
  }
  return x;
}

// The outliers of the tile's tokens [lo, lo + nt) of block b replace their rebuilt elements
// (after a barrier: the tiles are written).
template <class Tiles>
__device__ void place_outliers(const GearProblem& p, const GearBlock& b, int h, int lo, int nt,
                               int d, Tiles& sm) {
  if (b.key_k > 0) {
    const int32_t* index = gear::key_outlier_index(p, b, h);
    const uint16_t* values = gear::key_outlier_values(p, b, h);
    for (int c = threadIdx.x; c < d; c += kGearThreads) {
      for (int j = gear::first_key_outlier(p, b, index, c, lo); j < 2 * b.key_k; ++j) {
        const int i = index[size_t(j) * d + c] - lo;
        if (i >= nt) break;
        sm.k[i][c] = gear::value16(p, values[size_t(j) * d + c]);
      }
    }
  }
  const int per_token = 2 * p.value_k;
  for (int e = threadIdx.x; e < nt * per_token; e += kGearThreads) {
    const int i = e / per_token, j = e % per_token;
    sm.v[i][gear::value_outlier_index(p, b, h, lo + i)[j]] =
        gear::value16(p, gear::value_outlier_values(p, b, h, lo + i)[j]);
  }
}

// rebuild() at head_dim D (64 or 128): thread x keeps channel x mod D and takes every
// (kGearThreads / D)-th token of the tile from x / D on.
template <int D, class Tiles>
__device__ void rebuild_channels(const GearProblem& p, const GearSequence& s, int h, int t, int nt,
                                 Tiles& sm) {
  static_assert(kGearThreads % D == 0, "whole channels per thread");
  constexpr int kRows = kGearThreads / D;
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
  // This thread's P^T columns, loaded once for the tile.
  Column key_p, value_p;
  key_p.pc = rank > 0 ? b.key.p + size_t(h) * rank * D + c : nullptr;
  value_p.pc = rank > 0 ? b.value.p + size_t(h) * rank * D + c : nullptr;
#pragma unroll
  for (int j = 0; j < kHeldRank; ++j) {
    key_p.held[j] = j < rank ? value16(p, key_p.pc[size_t(j) * D]) : 0.f;
    value_p.held[j] = j < rank ? value16(p, value_p.pc[size_t(j) * D]) : 0.f;
  }
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
template <class Tiles>
__device__ void rebuild(const GearProblem& p, const GearSequence& s, int h, int t, int nt,
                        Tiles& sm) {
  const int d = p.head_dim;
  if (t >= s.compressed) {
    for (int e = threadIdx.x; e < nt * d; e += kGearThreads) {
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
  for (int e = threadIdx.x; e < nt * d; e += kGearThreads) {
    const int i = e / d, c = e % d;
    sm.k[i][c] = gear::element(p, b, true, h, lo + i, c);
    sm.v[i][c] = gear::element(p, b, false, h, lo + i, c);
  }
  __syncthreads();
  place_outliers(p, b, h, lo, nt, d, sm);
  __syncthreads();
}

}  // namespace kvbench::kernels::gear_tile
