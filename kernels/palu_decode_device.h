// The device code of kernels/palu_decode.cu: the attention over latents and the split merge,
// and the launcher's choice of instantiation. A header so that a CPU test runs exactly this
// code with emulated threads, warps, ldmatrix, cp.async and tensor-core mma
// (tests/unit/palu_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or by a
// host compiler that includes CUDA's fp16/bf16 headers, then defines KVB_KERNEL_EMULATED and
// the names the emulation gives.
//

// Design. A block takes a split of one (sequence, KV head)'s 16-token tiles; its four warps
// take tiles in turn. Per tile (all on tensor cores, mma.m16n8k16, fp32 accumulators):
//   1. K_pre [16 tokens, D] = H_k [16, R] L^T: the latents as A (ldmatrix from the warp's
//      staging buffer, filled by cp.async one tile ahead), the head's basis L [D, R] as B
//      (ldmatrix from shared memory, loaded once per block): D/8 x R/16 mmas.
//   2. RoPE on the fp32 accumulators: a lane holds channels c and c + D/2 of the same two
//      tokens (C fragments of n-tiles nt and nt + D/16), so the rotation is register-local.
//   3. S = Q K^T: the accumulators of n-tiles 2c, 2c+1 are, rounded to 16-bit, exactly the B
//      fragments of k-chunk c (no shuffles); the query group (<= 8 heads) is the A operand,
//      rows 8..15 zero. The score fragment's layout is the decode kernel's: lane 4g + m holds
//      head g at tokens 2m, 2m+1, 8+2m, 9+2m.
//   4. Online softmax per head (rows reduced over the 4 lanes of a row), then
//      O_lat [heads, R] += P H_v: the probabilities are already the A fragment, the value
//      latents the B operand (ldmatrix.trans from the staging buffer).
// The block merges its warps and writes (max, sum, O_lat) per head; a second kernel merges
// the splits and projects back through the value basis, out = L_v O_lat / sum (fp32, CUDA
// cores: D x R per query head, once).
//
// Palu's G-LRD (group g > 1: one latent per g KV heads) takes the same blocks, each KV head's
// reading its group's latents: g blocks read the same rows (from L2 when they run close
// together, else g times from memory); one block per group, its g * gq query rows in one
// mma's M, is the version that reads them once.
//
// Bytes: a token reads 2 R 16-bit latents per KV head (R = 96 of D = 128: 0.75 of fp16) and the
// RoPE tables stay in cache. Work per 16-token tile and KV head: D R / 128 + D / 8 + R / 8 mmas
// (R = 96, D = 128: 124), the price of keys that must be rotated after reconstruction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "mma_sm80.cuh"
#include "palu_decode.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "palu_decode_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::palu_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

using mma::as_u32;
using mma::fast_exp2;
using mma::mma16816;
using mma::pack2;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = kPaluTile;
constexpr float kLog2e = 1.4426950408889634f;

// Shared memory of a block (16-bit element strides padded by 8 so that ldmatrix's 8 rows of 16
// bytes fall in distinct banks).
template <int D, int R>
struct Smem {
  static constexpr int kStride = R + 8;                      // 16-bit elements per row
  static constexpr size_t kBasis = size_t(D) * kStride * 2;  // L [D][R]
  // RoPE offsets 0..15, rows padded by 8 floats: the four lanes of a row read the same
  // offset at neighbouring channels, which a pitch of D floats would put in one bank.
  static constexpr int kFinePitch = D + 8;
  static constexpr size_t kFine = size_t(kTile) * kFinePitch * 4;
  static constexpr size_t kTileBytes = size_t(kTile) * kStride * 2;  // one latent tile
  static constexpr size_t kWarpStage = 4 * kTileBytes;               // 2 stages x (K, V)
  static constexpr size_t kTotal = kBasis + kFine + kWarps * kWarpStage;
  // After the loop a warp's stage area holds its partial: max, sum per head, O_lat [8][R].
  static_assert(kWarpStage >= size_t(2 * kPaluMaxQPerKv + kPaluMaxQPerKv * R) * 4, "merge area");
};

// Split partials in the workspace: per (sequence, KV head, split), per query head of the
// group (8 rows), max (log2 domain), sum, then R latent sums.
template <class F>
__device__ __forceinline__ F* partial(F* ws, int R, int b, int kvh, int split, int kv_heads,
                                      int splits, int h) {
  const size_t block = (size_t(b) * kv_heads + kvh) * splits + split;
  return ws + (block * kPaluMaxQPerKv + h) * (R + 2);
}

// Rotates channels (ii, ii + D/2) of one token, (x1, x2), by the angle whose cos and sin are
// composed from the coarse (ch, sh) and the fine offset row's (palu::rope_cos_sin's formulas).
template <int D>
__device__ __forceinline__ void rotate(float& x1, float& x2, float ch, float sh,
                                       const float* fine_row, int ii) {
  const float cl = fine_row[ii], sl = fine_row[D / 2 + ii];
  const float c = fmaf(ch, cl, -sh * sl), s = fmaf(sh, cl, ch * sl);
  const float a = x1, b = x2;
  x1 = fmaf(a, c, -b * s);
  x2 = fmaf(b, c, a * s);
}

// kListed: the problem has kept lists (palu_decode.h): a tile's 16 entries are the i-th kept
// tokens, each gathered from its own slot and rotated at its own position; otherwise a tile is
// 16 consecutive slots of one page, rotated by the tile's coarse angle. kScores: the problem
// asks for each attended token's scaled score (a separate instantiation, so that a step
// without a policy's record pays no registers for it).
template <int D, int R, bool kBf16, bool kListed, bool kScores>
__device__ __forceinline__ void palu_body(const PaluProblem& p, int tiles_per_split, int splits,
                                          float* ws) {
  using S = Smem<D, R>;
  KVB_DYNAMIC_SMEM(smem);
  uint16_t* basis = reinterpret_cast<uint16_t*>(smem);
  float* fine = reinterpret_cast<float*>(smem + S::kBasis);
  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, m = lane & 3;
  unsigned char* stage = smem + S::kBasis + S::kFine + warp * S::kWarpStage;
  const int gq = p.q_heads / p.kv_heads;
  const palu::Kept kept = palu::kept(p, b, kvh);
  const int T = kept.n;  // tokens attended (every one held, or the kept ones)
  const int tiles = (T + kTile - 1) / kTile;
  const int tile_begin = split * tiles_per_split;
  const int tile_end = min(tiles, tile_begin + tiles_per_split);

  // The head's key basis and the fine RoPE table, once per block.
  const uint16_t* lk = static_cast<const uint16_t*>(p.k_basis) + size_t(kvh) * D * R;
  for (int i = threadIdx.x; i < D * R / 8; i += kThreads) {
    const int row = i / (R / 8), col = (i % (R / 8)) * 8;
    *reinterpret_cast<uint4*>(basis + row * S::kStride + col) =
        __ldg(reinterpret_cast<const uint4*>(lk + size_t(row) * R + col));
  }
  for (int i = threadIdx.x; i < kTile * D; i += kThreads)
    fine[(i / D) * S::kFinePitch + i % D] = __ldg(p.rope_fine + i);

  // Query fragments: head g of the group (zero beyond it), channels in natural order.
  uint32_t qf[D / 16][2];
  {
    const size_t q = (size_t(b) * p.q_heads + size_t(kvh) * gq + g) * D;
    auto pair = [&](int ch) {
      return pack2<kBf16>(palu::query(p, q + ch), palu::query(p, q + ch + 1));
    };
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      const int ch = 16 * c + 2 * m;
      qf[c][0] = g < gq ? pair(ch) : 0u;
      qf[c][1] = g < gq ? pair(ch + 8) : 0u;
    }
  }
  __syncthreads();

  // Copies tile `tile`'s key and value latents into stage `s` (rows past T zeroed), from the
  // latent head of this KV head's group (`head_row`: its first row in a page's rows).
  const size_t head_row = size_t(kvh / p.group) * p.page_size;
  const size_t page_rows = size_t(p.kv_heads / p.group) * p.page_size;
  const int* pages = p.block_table + size_t(b) * p.max_pages_per_seq;
  // The pool row of the token at `slot` (the tile's first one: rows follow within its page).
  auto pool_row = [&](int slot) {
    return size_t(pages[slot / p.page_size]) * page_rows + head_row + slot % p.page_size;
  };
  auto load_tile = [&](int tile, int s) {
    const int t0 = tile * kTile;
    const size_t row0 = kListed ? 0 : pool_row(t0);
    for (int kv = 0; kv < 2; ++kv) {
      const uint16_t* pool = static_cast<const uint16_t*>(kv ? p.v_latent : p.k_latent);
      uint16_t* dst = reinterpret_cast<uint16_t*>(stage + (2 * s + kv) * S::kTileBytes);
      for (int i = lane; i < kTile * R / 8; i += 32) {
        const int row = i / (R / 8), col = (i % (R / 8)) * 8;
        if (t0 + row < T) {
          const size_t at = kListed ? pool_row(kept.token(t0 + row)) : row0 + row;
          mma::cp_async16(dst + row * S::kStride + col, pool + at * R + col);
        } else {
          *reinterpret_cast<uint4*>(dst + row * S::kStride + col) = make_uint4(0, 0, 0, 0);
        }
      }
    }
  };

  const float score_scale = p.softmax_scale * kLog2e;
  float run_max = -INFINITY, run_sum = 0.f;  // head g; run_sum: this lane's tokens
  float o[R / 8][4];
#pragma unroll
  for (int n = 0; n < R / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  int tile = tile_begin + warp;
  if (tile < tile_end) load_tile(tile, 0);
  mma::cp_async_commit();
  for (int k = 0; tile < tile_end; ++k, tile += kWarps) {
    if (tile + kWarps < tile_end) load_tile(tile + kWarps, (k + 1) & 1);
    mma::cp_async_commit();
    mma::cp_async_wait<1>();
    __syncwarp();
    const uint16_t* hk = reinterpret_cast<const uint16_t*>(stage + (2 * (k & 1)) * S::kTileBytes);
    const uint16_t* hv = hk + S::kTileBytes / 2;

    // 1. K_pre = H_k L^T.
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < R / 16; ++kc) {
      uint32_t a[4];
      mma::ldmatrix_x4(a, hk + (lane % 16) * S::kStride + 16 * kc + (lane / 16) * 8);
#pragma unroll
      for (int nt = 0; nt < D / 8; nt += 2) {
        uint32_t bb[4];
        mma::ldmatrix_x4(bb, basis + (8 * nt + lane % 8 + (lane / 16) * 8) * S::kStride + 16 * kc +
                                 ((lane / 8) % 2) * 8);
        mma16816<kBf16>(acc[nt], a, bb[0], bb[1]);
        mma16816<kBf16>(acc[nt + 1], a, bb[2], bb[3]);
      }
    }

    // 2. RoPE at the positions of rows g and g + 8 (palu::rope_cos_sin's formulas): slots
    // t0 + g and t0 + g + 8, or the kept tokens' (rows past T are zero latents: any angle).
    const int t0 = tile * kTile;
    if constexpr (kListed) {
      int pos[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) pos[h] = kept.token(min(t0 + g + 8 * h, T - 1));
#pragma unroll
      for (int nt = 0; nt < D / 16; ++nt) {
        const int i = 8 * nt + 2 * m;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float* coarse = p.rope_coarse + size_t(pos[h] / kTile) * D;  // [2][D / 2]
          const float2 ch = __ldg(reinterpret_cast<const float2*>(coarse + i));
          const float2 sh = __ldg(reinterpret_cast<const float2*>(coarse + D / 2 + i));
          const int off = pos[h] % kTile;
#pragma unroll
          for (int e = 2 * h; e < 2 * h + 2; ++e) {  // (row g + 8h, i), (g + 8h, i + 1)
            rotate<D>(acc[nt][e], acc[nt + D / 16][e], (e & 1) ? ch.y : ch.x, (e & 1) ? sh.y : sh.x,
                      fine + off * S::kFinePitch, i + (e & 1));
          }
        }
      }
    } else {
      const float* coarse = p.rope_coarse + size_t(tile) * D;  // [2][D / 2]
#pragma unroll
      for (int nt = 0; nt < D / 16; ++nt) {
        const int i = 8 * nt + 2 * m;
        const float2 ch = __ldg(reinterpret_cast<const float2*>(coarse + i));
        const float2 sh = __ldg(reinterpret_cast<const float2*>(coarse + D / 2 + i));
#pragma unroll
        for (int e = 0; e < 4; ++e) {  // (token g, i), (g, i+1), (g+8, i), (g+8, i+1)
          const int off = g + 8 * (e >> 1);
          rotate<D>(acc[nt][e], acc[nt + D / 16][e], (e & 1) ? ch.y : ch.x, (e & 1) ? sh.y : sh.x,
                    fine + off * S::kFinePitch, i + (e & 1));
        }
      }
    }

    // 3. S = Q K^T for tokens 0..7 (s0) and 8..15 (s1).
    float s0[4] = {0.f, 0.f, 0.f, 0.f}, s1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      const uint32_t a[4] = {qf[c][0], 0u, qf[c][1], 0u};
      mma16816<kBf16>(s0, a, pack2<kBf16>(acc[2 * c][0], acc[2 * c][1]),
                      pack2<kBf16>(acc[2 * c + 1][0], acc[2 * c + 1][1]));
      mma16816<kBf16>(s1, a, pack2<kBf16>(acc[2 * c][2], acc[2 * c][3]),
                      pack2<kBf16>(acc[2 * c + 1][2], acc[2 * c + 1][3]));
    }

    // 4. Online softmax (log2 domain) for head g over tokens 2m, 2m+1, 8+2m, 9+2m; the scaled
    // scores go out first when a policy records them (entry i: the i-th token attended).
    float x[4] = {s0[0], s0[1], s1[0], s1[1]};
    if (kScores && g < gq) {
      float* row = p.scores + (size_t(b) * p.q_heads + size_t(kvh) * gq + g) * p.score_stride;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int at = t0 + 2 * m + (i & 1) + 8 * (i >> 1);
        if (at < T) row[at] = x[i] * p.softmax_scale;
      }
    }
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int tok = 2 * m + (i & 1) + 8 * (i >> 1);
      x[i] = t0 + tok < T ? x[i] * score_scale : -INFINITY;
      mx = fmaxf(mx, x[i]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float new_max = fmaxf(run_max, mx);
    const float base = new_max == -INFINITY ? 0.f : new_max;
    const float alpha = fast_exp2(run_max - base);
    run_max = new_max;
    float pr[4];
    run_sum *= alpha;
#pragma unroll
    for (int i = 0; i < 4; ++i) run_sum += (pr[i] = fast_exp2(x[i] - base));
    const uint32_t pa[4] = {pack2<kBf16>(pr[0], pr[1]), 0u, pack2<kBf16>(pr[2], pr[3]), 0u};
#pragma unroll
    for (int n = 0; n < R / 8; n += 2) {
      uint32_t bb[4];
      mma::ldmatrix_x4<true>(
          bb, hv + (lane % 8 + ((lane / 8) % 2) * 8) * S::kStride + 8 * n + (lane / 16) * 8);
      o[n][0] *= alpha, o[n][1] *= alpha, o[n + 1][0] *= alpha, o[n + 1][1] *= alpha;
      mma16816<kBf16>(o[n], pa, bb[0], bb[1]);
      mma16816<kBf16>(o[n + 1], pa, bb[2], bb[3]);
    }
    __syncwarp();  // every lane has read this stage before it is refilled
  }
  mma::cp_async_wait<0>();
  run_sum += __shfl_xor_sync(0xffffffffu, run_sum, 1);
  run_sum += __shfl_xor_sync(0xffffffffu, run_sum, 2);
  __syncthreads();  // every warp is done with the stages: they become the merge areas

  // The warp's partial: max and sum per head, O_lat [8][R].
  float* mine = reinterpret_cast<float*>(stage);
  if (m == 0) mine[g] = run_max, mine[kPaluMaxQPerKv + g] = run_sum;
#pragma unroll
  for (int n = 0; n < R / 8; ++n) {
    float* row = mine + 2 * kPaluMaxQPerKv + g * R + 8 * n + 2 * m;
    row[0] = o[n][0], row[1] = o[n][1];
  }
  __syncthreads();

  // Merge the warps: thread i takes (head, rank) pairs.
  for (int i = threadIdx.x; i < gq * (R + 1); i += kThreads) {
    const int h = i / (R + 1), a = i % (R + 1);  // a == R: the max and sum
    float mw[kWarps], gmax = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* part =
          reinterpret_cast<const float*>(smem + S::kBasis + S::kFine + w * S::kWarpStage);
      mw[w] = part[h];
      gmax = fmaxf(gmax, mw[w]);
    }
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float* part =
          reinterpret_cast<const float*>(smem + S::kBasis + S::kFine + w * S::kWarpStage);
      const float scale = mw[w] == -INFINITY ? 0.f : fast_exp2(mw[w] - gmax);
      acc += scale * (a == R ? part[kPaluMaxQPerKv + h] : part[2 * kPaluMaxQPerKv + h * R + a]);
    }
    float* out = partial(ws, R, b, kvh, split, p.kv_heads, splits, h);
    if (a == R)
      out[0] = gmax, out[1] = acc;
    else
      out[2 + a] = acc;
  }
}

// Merges the splits of (sequence, KV head) and projects: out = L_v (sum_s w_s O_s) / sum.
template <int D, int R>
__device__ __forceinline__ void combine_body(const PaluProblem& p, int splits, const float* ws) {
  __shared__ float v_lat[kPaluMaxQPerKv][R];
  const int kvh = blockIdx.x, b = blockIdx.y, gq = p.q_heads / p.kv_heads;
  for (int i = threadIdx.x; i < gq * R; i += kThreads) {
    const int h = i / R, a = i % R;
    float gmax = -INFINITY;
    for (int s = 0; s < splits; ++s)
      gmax = fmaxf(gmax, partial(ws, R, b, kvh, s, p.kv_heads, splits, h)[0]);
    float sum = 0.f, acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float* part = partial(ws, R, b, kvh, s, p.kv_heads, splits, h);
      const float w = part[0] == -INFINITY ? 0.f : exp2f(part[0] - gmax);
      sum += w * part[1];
      acc += w * part[2 + a];
    }
    v_lat[h][a] = sum > 0.f ? acc / sum : 0.f;  // no token at all: 0, as the decode kernels
  }
  __syncthreads();
  for (int i = threadIdx.x; i < gq * D; i += kThreads) {
    const int h = i / D, c = i % D;
    palu::store_output(p, (size_t(b) * p.q_heads + size_t(kvh) * gq + h) * D + c,
                       palu::output_channel(p, kvh, v_lat[h], c));
  }
}

// The instantiation for the problem (head_dim, rank, dtype, kept lists, scores), as
// run(D, R, bf16, listed, scored) with std::integral_constant arguments, so that the launcher
// and the emulating test instantiate the same kernels. false for a head_dim or rank not built.
template <class Run>
bool with_kernel(const PaluProblem& p, Run&& run) {
  auto listed = [&](auto d, auto r, auto bf16) {
    const bool scored = p.scores != nullptr;
    using T = std::true_type;
    using F = std::false_type;
    if (p.kept_counts != nullptr)
      scored ? run(d, r, bf16, T{}, T{}) : run(d, r, bf16, T{}, F{});
    else
      scored ? run(d, r, bf16, F{}, T{}) : run(d, r, bf16, F{}, F{});
  };
  auto rank = [&](auto d, auto bf16) {
    switch (p.rank) {
      case 32:
        return listed(d, std::integral_constant<int, 32>{}, bf16), true;
      case 64:
        return listed(d, std::integral_constant<int, 64>{}, bf16), true;
      case 96:
        return listed(d, std::integral_constant<int, 96>{}, bf16), true;
      case 128:
        return listed(d, std::integral_constant<int, 128>{}, bf16), true;
    }
    return false;
  };
  auto dtype = [&](auto d) {
    return p.bf16 ? rank(d, std::true_type{}) : rank(d, std::false_type{});
  };
  if (p.head_dim == 64) return dtype(std::integral_constant<int, 64>{});
  if (p.head_dim == 128) return dtype(std::integral_constant<int, 128>{});
  return false;
}

}  // namespace
}  // namespace kvbench::kernels::palu_device
