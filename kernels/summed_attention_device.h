// The device code of kernels/summed_attention.cu (its design is there): the two passes' bodies.
// A header so that a CPU test runs exactly this code with emulated threads, warps, ldmatrix,
// cp.async and tensor-core mma (tests/unit/summed_emulation_test.cpp,
// tests/unit/cuda_emulation.h): compiled by nvcc, or by a host compiler that includes CUDA's
// fp16/bf16 headers, then defines KVB_KERNEL_EMULATED and the names the emulation gives.
#pragma once

#include <cstdint>

#include "mma_sm80.cuh"
#include "summed_attention.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "summed_attention_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::summed_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

constexpr int kTile = 64;  // queries (lse pass) or keys (column pass) per block and per step
constexpr int kWarps = 4;  // 16 rows of the block's tile each
constexpr int kThreads = 32 * kWarps;

template <int D>
struct Smem {
  // Row stride in 16-bit elements: the pad of 16 bytes puts ldmatrix's 8 rows in 8 distinct
  // bank groups.
  static constexpr int kStride = D + 8;
  uint16_t a[kTile * kStride];  // the block's own tile (A rows of the mma)
  uint16_t b[kTile * kStride];  // the streamed tile (B columns)
  float lse[kTile];             // column pass: the streamed queries' lse
};

// Rows [0, rows) of `src` (row r at src + r * D) into `dst` by cp.async, rows past `rows`
// zeroed; one commit group.
template <int D>
__device__ void load_tile(uint16_t* dst, const uint16_t* src, int rows) {
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  for (int c = threadIdx.x; c < kTile * kChunks; c += kThreads) {
    const int r = c / kChunks, x = (c % kChunks) * 8;
    uint16_t* d = dst + r * Smem<D>::kStride + x;
    if (r < rows)
      mma::cp_async16(d, src + size_t(r) * D + x);
    else
      *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
  }
  mma::cp_async_commit();
}

// The warp's 16 rows of `tile` as A fragments, one per 16 channels.
template <int D>
__device__ void load_a(uint32_t (&a)[D / 16][4], const uint16_t* tile, int warp, int lane) {
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc)
    mma::ldmatrix_x4(a[kc],
                     tile + (16 * warp + lane % 16) * Smem<D>::kStride + 16 * kc + 8 * (lane / 16));
}

// s[nt] = the warp's 16 rows times rows 8nt .. 8nt + 7 of `b` (C layout of mma_sm80.cuh:
// s[nt][2r + e] is row g + 8r against b's row 8nt + 2m + e, lane = 4g + m).
template <int D, bool kBf16>
__device__ void tile_scores(float (&s)[8][4], const uint32_t (&a)[D / 16][4], const uint16_t* b,
                            int lane) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc)
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      // Matrices: rows 16p..+7 at channels 16kc..+7 and +8..+15 (b0, b1 of n-tile 2p), then
      // rows 16p+8..+15 likewise (n-tile 2p + 1).
      uint32_t r[4];
      mma::ldmatrix_x4(r, b + (16 * p + lane % 8 + 8 * (lane / 16)) * Smem<D>::kStride + 16 * kc +
                              8 * ((lane / 8) % 2));
      mma::mma16816<kBf16>(s[2 * p], a[kc], r[0], r[1]);
      mma::mma16816<kBf16>(s[2 * p + 1], a[kc], r[2], r[3]);
    }
}

// The warp's scores against the streamed tile b, in base 2: c * (A.B + 2^-11 * the remainders'
// product when keys are split, kSplit). The lse pass streams keys (kLoInB: their remainders
// in b_lo); the column pass holds them as A (their remainders in a_lo).
template <int D, bool kBf16, bool kSplit, bool kLoInB>
__device__ void scaled_scores(float (&s)[8][4], const uint32_t (&a)[D / 16][4],
                              const uint32_t (&a_lo)[D / 16][4], const uint16_t* b,
                              const uint16_t* b_lo, int lane, float c) {
  tile_scores<D, kBf16>(s, a, b, lane);
  if constexpr (kSplit) {
    float lo[8][4];
    if constexpr (kLoInB)
      tile_scores<D, false>(lo, a, b_lo, lane);
    else
      tile_scores<D, false>(lo, a_lo, b, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int x = 0; x < 4; ++x) s[nt][x] = fmaf(lo[nt][x], kSummedLoScale, s[nt][x]);
  }
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int x = 0; x < 4; ++x) s[nt][x] *= c;
}

template <int D, bool kBf16, bool kSplit>
__device__ __forceinline__ void lse_body(SummedAttentionProblem p) {
  __shared__ __align__(16) Smem<D> sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m4 = lane % 4;
  const int h = blockIdx.y, kvh = h / (p.heads / p.kv_heads), q0 = blockIdx.x * kTile;
  const int rows = min(kTile, p.n - q0), before = p.held - p.n;
  const float c = p.scale * kSummedLog2e;
  const int qi[2] = {q0 + 16 * warp + lane / 4, q0 + 16 * warp + lane / 4 + 8};
  const size_t key0 = size_t(kvh) * p.held * D;
  // The queries go to registers once; sm.a then holds the key remainders (kSplit).
  load_tile<D>(sm.a, p.q + (size_t(h) * p.n + q0) * D, rows);
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t a[D / 16][4];
  load_a<D>(a, sm.a, warp, lane);
  __syncthreads();  // every warp has its queries before sm.a is overwritten
  float mx[2] = {-INFINITY, -INFINITY}, sum[2] = {0.f, 0.f};
  const int seen = before + q0 + rows;  // keys [0, seen) are seen by a query of the block
  for (int t0 = 0; t0 < seen; t0 += kTile) {
    load_tile<D>(sm.b, p.k + key0 + size_t(t0) * D, min(kTile, p.held - t0));
    if constexpr (kSplit)
      load_tile<D>(sm.a, p.k_lo + key0 + size_t(t0) * D, min(kTile, p.held - t0));
    mma::cp_async_wait<0>();
    __syncthreads();
    if (t0 <= before + q0 + 16 * warp + 15) {  // else past the reach of the warp's queries
      float s[8][4];
      scaled_scores<D, kBf16, kSplit, true>(s, a, a, sm.b, sm.a, lane, c);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tmax = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = t0 + 8 * nt + 2 * m4 + e;
            const float x = qi[r] < p.n && j <= before + qi[r] ? s[nt][2 * r + e] : -INFINITY;
            s[nt][2 * r + e] = x;
            tmax = fmaxf(tmax, x);
          }
        const float nm = fmaxf(mx[r], tmax);
        if (nm == -INFINITY) continue;  // nothing seen yet (ex2 of -inf - -inf is NaN)
        float add = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
          add += mma::fast_exp2(s[nt][2 * r] - nm) + mma::fast_exp2(s[nt][2 * r + 1] - nm);
        sum[r] = sum[r] * mma::fast_exp2(mx[r] - nm) + add;
        mx[r] = nm;
      }
    }
    __syncthreads();  // the next tile overwrites sm.b (and sm.a)
  }
  // A row's four lanes (4g .. 4g + 3) each saw every fourth pair of keys: merge them.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int o = 1; o <= 2; o *= 2) {
      const float om = __shfl_xor_sync(0xffffffffu, mx[r], o);
      const float os = __shfl_xor_sync(0xffffffffu, sum[r], o);
      const float nm = fmaxf(mx[r], om);
      if (nm != -INFINITY)
        sum[r] = sum[r] * mma::fast_exp2(mx[r] - nm) + os * mma::fast_exp2(om - nm);
      mx[r] = nm;
    }
    if (m4 == 0 && qi[r] < p.n) p.lse[size_t(h) * p.n + qi[r]] = mx[r] + log2f(sum[r]);
  }
}

template <int D, bool kBf16, bool kSplit>
__device__ __forceinline__ void column_body(SummedAttentionProblem p) {
  __shared__ __align__(16) Smem<D> sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m4 = lane % 4;
  const int kvh = blockIdx.y, group = p.heads / p.kv_heads, j0 = blockIdx.x * kTile;
  const int before = p.held - p.n;
  const float c = p.scale * kSummedLog2e;
  const int kj[2] = {j0 + 16 * warp + lane / 4, j0 + 16 * warp + lane / 4 + 8};
  // The block's keys (and remainders) go to registers once; sm.b then streams the queries.
  const size_t key0 = (size_t(kvh) * p.held + j0) * D;
  load_tile<D>(sm.a, p.k + key0, min(kTile, p.held - j0));
  if constexpr (kSplit) load_tile<D>(sm.b, p.k_lo + key0, min(kTile, p.held - j0));
  mma::cp_async_wait<0>();
  __syncthreads();
  uint32_t a[D / 16][4], a_lo[D / 16][4];  // a_lo: kSplit only (unused registers otherwise)
  load_a<D>(a, sm.a, warp, lane);
  if constexpr (kSplit) load_a<D>(a_lo, sm.b, warp, lane);
  __syncthreads();  // every warp has its keys before sm.b is overwritten
  float acc[2] = {0.f, 0.f};
  // Key j is seen from query j - before on: the block's first key from `first` (< n, as j0 <
  // held), so every block runs at least one step.
  const int first = max(0, j0 - before);
  for (int h = kvh * group; h < (kvh + 1) * group; ++h)
    for (int i0 = first; i0 < p.n; i0 += kTile) {
      const int rows = min(kTile, p.n - i0);
      load_tile<D>(sm.b, p.q + (size_t(h) * p.n + i0) * D, rows);
      if (threadIdx.x < kTile)
        sm.lse[threadIdx.x] =
            int(threadIdx.x) < rows ? p.lse[size_t(h) * p.n + i0 + threadIdx.x] : 0.f;
      mma::cp_async_wait<0>();
      __syncthreads();
      // Skipped when no query of the tile sees the warp's keys.
      if (j0 + 16 * warp <= before + i0 + rows - 1) {
        float s[8][4];
        scaled_scores<D, kBf16, kSplit, false>(s, a, a_lo, sm.b, nullptr, lane, c);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = 8 * nt + 2 * m4 + e, i = i0 + col;
            const float lse = sm.lse[col];
#pragma unroll
            for (int r = 0; r < 2; ++r)
              if (i < p.n && kj[r] <= before + i) acc[r] += mma::fast_exp2(s[nt][2 * r + e] - lse);
          }
      }
      __syncthreads();  // the next step overwrites sm.b and sm.lse
    }
    // A key's row is spread over four lanes (4g .. 4g + 3), each with every fourth query pair.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 1);
    acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], 2);
    if (m4 == 0 && kj[r] < p.held) p.out[size_t(kvh) * p.held + kj[r]] = acc[r] / float(group);
  }
}

}  // namespace
}  // namespace kvbench::kernels::summed_device
