// The device code of kernels/small_gemm.cu (small_gemm.h's multiply). A header so that a CPU
// test runs exactly this code with emulated warps and tensor-core steps
// (tests/unit/small_gemm_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or
// by a host compiler that includes CUDA's 16-bit headers, then defines KVB_KERNEL_EMULATED and
// the names the emulation gives.
//
// Each mma.m16n8k16 takes the batch's rows as A's 16 rows and 8 weight rows as B's 8 columns.
// A lane loads 16 bytes (8 values) of its weight row per 32-value chunk of `in`, at 8q for lane
// 4g + q: two MMAs' B fragments, but in another order of k than the MMA's layout (which gives
// a lane values 2q, 2q + 1, 8 + 2q, 9 + 2q of 16). A dot product does not care about the order of
// its k as long as A's fragments are loaded in the same order, so the lane loads its x rows' 16
// bytes at the same offset and the weights never leave registers to be rearranged.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mma_sm80.cuh"
#include "small_gemm.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "small_gemm_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::small_gemm_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;

struct Words {
  uint32_t w[4];  // 16 bytes: 8 consecutive values of a row
};

// 16 bytes of a weight row, read once by the whole grid: not kept in L1, which holds x's rows
// for the block's other warps and the other blocks on the multiprocessor.
__device__ __forceinline__ Words load_weights(const uint16_t* p) {
  Words r;
#if defined(KVB_KERNEL_EMULATED)
  emulated_aligned16(p, "small_gemm weight load");
  std::memcpy(&r, p, 16);
#else
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3])
      : "l"(p));
#endif
  return r;
}

// 16 bytes of a row of x, which every block reads: through the read-only cache.
__device__ __forceinline__ Words load_x(const uint16_t* p) {
#if defined(KVB_KERNEL_EMULATED)
  emulated_aligned16(p, "small_gemm x load");
#endif
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  return {{v.x, v.y, v.z, v.w}};
}

// Block x: output columns [n0, n0 + 8 kColTiles) for every row; warp w sums chunks w, w + 8, ...
// of `in`. kRowTiles MMA row tiles of 16 (rows beyond p.rows computed, never written). The
// kernel's body (small_gemm.cu wraps it in a __global__ with its launch bounds).
template <bool kBf16, int kRowTiles, int kColTiles>
__device__ __forceinline__ void small_gemm_body(const SmallGemmProblem& p) {
  // Chunks a lane has in flight per round: 128 bytes of weights per lane whatever the tiles.
  constexpr int kUnroll = 8 / kColTiles;
  constexpr int kRows = 16 * kRowTiles, kCols = 8 * kColTiles;
  __shared__ float sums[kWarps][kRows][kCols];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, g = lane / 4, q = lane % 4;
  const int n0 = int(blockIdx.x) * kCols, chunks = p.in / kSmallGemmChunk;
  // This lane's weight row of each column tile and its x rows (g and g + 8 of each row tile),
  // at value 8q of a chunk. Rows past the weights' or x's end read row 0 instead: a weight row
  // feeds only its own output column and an x row only its own output row, neither of which is
  // stored, so every load in the loop is unconditional and the loads of a round issue together.
  const uint16_t* w_row[kColTiles];
#pragma unroll
  for (int t = 0; t < kColTiles; ++t) {
    const int n = n0 + 8 * t + g;
    w_row[t] = static_cast<const uint16_t*>(p.w) + size_t(n < p.out ? n : 0) * p.in + 8 * q;
  }
  const uint16_t* x_row[kRowTiles][2];
#pragma unroll
  for (int m = 0; m < kRowTiles; ++m)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = 16 * m + 8 * h + g;
      x_row[m][h] = static_cast<const uint16_t*>(p.x) + size_t(r < p.rows ? r : 0) * p.in + 8 * q;
    }

  float acc[kRowTiles][kColTiles][4] = {};
  // Chunk c's MMAs: two per (row tile, column tile), values 4 half .. 4 half + 3 of the lane's 8.
  auto multiply = [&](const Words(&wv)[kColTiles], const Words(&xv)[kRowTiles][2]) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int m = 0; m < kRowTiles; ++m) {
        const uint32_t a[4] = {xv[m][0].w[2 * half], xv[m][1].w[2 * half], xv[m][0].w[2 * half + 1],
                               xv[m][1].w[2 * half + 1]};
#pragma unroll
        for (int t = 0; t < kColTiles; ++t)
          mma::mma16816<kBf16>(acc[m][t], a, wv[t].w[2 * half], wv[t].w[2 * half + 1]);
      }
  };
  auto load = [&](int c, Words(&wv)[kColTiles], Words(&xv)[kRowTiles][2]) {
    const size_t k = size_t(c) * kSmallGemmChunk;
#pragma unroll
    for (int t = 0; t < kColTiles; ++t) wv[t] = load_weights(w_row[t] + k);
#pragma unroll
    for (int m = 0; m < kRowTiles; ++m)
#pragma unroll
      for (int h = 0; h < 2; ++h) xv[m][h] = load_x(x_row[m][h] + k);
  };
  // Whole rounds: chunks c0, c0 + 8, ... c0 + 8 (kUnroll - 1), every load before any MMA.
  int c0 = warp;
  for (; c0 + kWarps * (kUnroll - 1) < chunks; c0 += kWarps * kUnroll) {
    Words wv[kUnroll][kColTiles], xv[kUnroll][kRowTiles][2];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) load(c0 + u * kWarps, wv[u], xv[u]);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) multiply(wv[u], xv[u]);
  }
  for (; c0 < chunks; c0 += kWarps) {  // the warp's last chunks, fewer than a round
    Words wv[kColTiles], xv[kRowTiles][2];
    load(c0, wv, xv);
    multiply(wv, xv);
  }

  // The warps' partial sums (C fragments: rows g, g + 8; columns 2q, 2q + 1) through shared
  // memory; each output summed over the warps in one order, the bias added, rounded once.
#pragma unroll
  for (int m = 0; m < kRowTiles; ++m)
#pragma unroll
    for (int t = 0; t < kColTiles; ++t) {
      float* top = &sums[warp][16 * m + g][8 * t + 2 * q];
      float* bottom = &sums[warp][16 * m + g + 8][8 * t + 2 * q];
      top[0] = acc[m][t][0], top[1] = acc[m][t][1];
      bottom[0] = acc[m][t][2], bottom[1] = acc[m][t][3];
    }
  __syncthreads();
  for (int i = int(threadIdx.x); i < kRows * kCols; i += kThreads) {
    const int r = i / kCols, col = i % kCols, n = n0 + col;
    if (r >= p.rows || n >= p.out) continue;
    float s = 0.f;
    for (int v = 0; v < kWarps; ++v) s += sums[v][r][col];
    if (p.bias) s += load_act(p.bias, size_t(n), p.dtype);
    store_act(p.y, size_t(r) * p.out + n, s, p.dtype);
  }
}

// Calls run(bf16, row_tiles, column_tiles, blocks), the first three as integral constants, with
// the instantiation a problem takes (the launcher's choice and the emulated test's alike);
// false for none (small_gemm_check rejects such a problem).
template <class Run>
bool with_kernel(const SmallGemmProblem& p, Run&& run) {
  if (small_gemm_check(p)[0] != '\0') return false;
  const int columns = small_gemm_columns(p);
  const int blocks = (p.out + columns - 1) / columns;
  auto cols = [&](auto bf16, auto row_tiles) {
    if (columns == 32)
      run(bf16, row_tiles, std::integral_constant<int, 4>{}, blocks);
    else
      run(bf16, row_tiles, std::integral_constant<int, 2>{}, blocks);
  };
  auto rows = [&](auto bf16) {
    if (p.rows > 16)
      cols(bf16, std::integral_constant<int, 2>{});
    else
      cols(bf16, std::integral_constant<int, 1>{});
  };
  if (p.dtype == ActDtype::kBf16)
    rows(std::true_type{});
  else
    rows(std::false_type{});
  return true;
}

}  // namespace
}  // namespace kvbench::kernels::small_gemm_device
