// The retained-index decode kernels of kernels/retained_decode.cu: the one-token loop and the
// loop with U kept tokens per warp step (tokens_per_step). A header of device code so that a
// CPU test runs exactly this code with emulated threads, warps and shuffles
// (tests/unit/retained_emulation_test.cpp): compiled by nvcc, or by a host compiler after the
// test defines KVB_KERNEL_EMULATED and the CUDA names used here (__global__, __device__,
// __forceinline__, __shared__, threadIdx, blockIdx, __syncthreads, __shfl_xor_sync, uint2,
// __ushort_as_half, __half2float, __uint_as_float).
#pragma once

#include <type_traits>

#include "dispatch.h"
#include "retained_decode.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#elif !defined(KVB_KERNEL_EMULATED)
#error "retained_decode_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::retained_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = kRetainedMaxHeadDim / 32;

// The block's four warps' partial softmaxes (max m, sum, and each lane's `per` channels from
// d0 in acc) merged through shared memory into sequence b's query head qh's output by warp 0.
// Every thread calls it.
__device__ __forceinline__ void merge_warps(float m, float sum, const float* acc, int per, int d0,
                                            const RetainedProblem& pr, int b, int qh) {
  __shared__ float part_max[kWarps], part_sum[kWarps], part_acc[kWarps][kRetainedMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part_max[warp] = m, part_sum[warp] = sum;
  for (int j = 0; j < per; ++j) part_acc[warp][d0 + j] = acc[j];
  __syncthreads();
  if (warp != 0) return;
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part_max[w]);
  // A warp that saw no token has max -inf and sum 0: it adds nothing (its weight is 0, not
  // exp(-inf - -inf)); with no token at all the output is 0, as the decode kernels'.
  float scale[kWarps], total = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    scale[w] = part_max[w] == -INFINITY ? 0.f : expf(part_max[w] - mx);
    total += part_sum[w] * scale[w];
  }
  for (int j = 0; j < per; ++j) {
    float a = 0.f;
    for (int w = 0; w < kWarps; ++w) a += part_acc[w][d0 + j] * scale[w];
    retained_store(pr, b, qh, d0 + j, total > 0.f ? a / total : 0.f);
  }
}

// Block = one (sequence, query head), four warps. Warp w attends the kept tokens w, w + 4, ...
// one at a time; its lanes decode a token's channels in slices (decode_paged_channels: a row's
// bytes are read by the whole warp at once), reduce the dot product with shuffles and keep an
// online softmax over their own channels. The four warps' partial softmaxes merge through
// shared memory. The same arithmetic as retained_partial(), in another summation order.
__global__ void retained_decode_kernel(RetainedProblem pr, PagedKvStore s) {
  const int b = blockIdx.x / pr.q_heads, qh = blockIdx.x % pr.q_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int D = pr.head_dim, per = D / 32, d0 = lane * per;
  const RetainedHead r = retained_head(pr, b, qh);
  const int h = r.h, row = r.row, T = r.T;
  float qv[kMaxPerLane], x[kMaxPerLane], acc[kMaxPerLane];
  for (int j = 0; j < per; ++j) qv[j] = r.query(d0 + j), acc[j] = 0.f;
  float m = -INFINITY, sum = 0.f;
  for (int i = warp; i < r.n; i += kWarps) {
    const int t = r.token(i);
    decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/true, h, t, T, d0, d0 + per, x);
    float dot = 0.f;
    for (int j = 0; j < per; ++j) dot = fmaf(qv[j], x[j], dot);
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float score = dot * pr.softmax_scale, mn = fmaxf(m, score);
    if (pr.scores && lane == 0)
      pr.scores[(size_t(b) * pr.q_heads + qh) * pr.score_stride + i] = score;
    const float rescale = expf(m - mn), w = expf(score - mn);  // expf(-inf) = 0 at first
    decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/false, h, t, T, d0, d0 + per, x);
    for (int j = 0; j < per; ++j) acc[j] = fmaf(w, x[j], acc[j] * rescale);
    sum = sum * rescale + w;
    m = mn;
  }
  merge_warps(m, sum, acc, per, d0, pr, b, qh);
}

// A lane's PER consecutive 16-bit channels at x (8-byte aligned for PER 4, 4-byte for 2: a row
// starts on 256 or 128 bytes and lane l's channels at 2 * PER * l), in one load where it can.
template <int PER>
__device__ __forceinline__ void load_raw16(const uint16_t* x, uint16_t (&raw)[PER]) {
  if constexpr (PER == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(x);
    raw[0] = uint16_t(v.x), raw[1] = uint16_t(v.x >> 16);
    raw[2] = uint16_t(v.y), raw[3] = uint16_t(v.y >> 16);
  } else if constexpr (PER == 2) {
    const uint32_t v = *reinterpret_cast<const uint32_t*>(x);
    raw[0] = uint16_t(v), raw[1] = uint16_t(v >> 16);
  } else {
#pragma unroll
    for (int j = 0; j < PER; ++j) raw[j] = x[j];
  }
}

// A 16-bit channel's value: the hardware's conversions (exact, as encode::half_value's and
// bf16_value's), which wait for nothing but their operand.
template <KvFormat F>
__device__ __forceinline__ float value16(uint16_t raw) {
  if constexpr (F == KvFormat::kFp16) return __half2float(__ushort_as_half(raw));
  return __uint_as_float(uint32_t(raw) << 16);
}

// tokens_per_step U > 1: the loop above with U kept tokens per warp step. One format and
// head_dim per instantiation, so that decoding a token is straight-line code (the format's
// switch folded, each lane's PER channels in registers): the U tokens' list entries, then
// their pages' rows, are loaded before any is used, and U loads are in flight where the loop
// above waits for each token's dependent loads in turn. Token u of a step is kept token
// i + u * kWarps; past r.n it repeats token i (its loads are harmless) with weight 0. Then U
// dot products (every lane runs every shuffle) and one rescale of the online softmax per step.
template <int U, KvFormat F, int PER>
__global__ void retained_decode_multi(RetainedProblem pr, PagedKvStore s) {
  const int b = blockIdx.x / pr.q_heads, qh = blockIdx.x % pr.q_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int D = PER * 32;
  const int d0 = lane * PER;
  s.format = F;  // a constant once inlined: decode_paged_channels' switch folds
  const RetainedHead r = retained_head(pr, b, qh);
  const int h = r.h, row = r.row, T = r.T;
  float qv[PER], acc[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) qv[j] = r.query(d0 + j), acc[j] = 0.f;
  float m = -INFINITY, sum = 0.f;
  for (int i = warp; i < r.n; i += kWarps * U) {
    int t[U];
    bool live[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      live[u] = i + u * kWarps < r.n;
      t[u] = r.token(live[u] ? i + u * kWarps : i);
    }
    float xk[U][PER], xv[U][PER];
    if constexpr (F == KvFormat::kFp16 || F == KvFormat::kBf16) {
      // The rows' raw channels first (every load issued), then their values.
      uint16_t rk[U][PER], rv[U][PER];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const size_t slab = size_t(r.pages[t[u] / s.page_size]) * pr.kv_heads + h;
        const size_t at = (slab * s.page_size + t[u] % s.page_size) * D + d0;
        load_raw16<PER>(static_cast<const uint16_t*>(s.k_data) + at, rk[u]);
        load_raw16<PER>(static_cast<const uint16_t*>(s.v_data) + at, rv[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int j = 0; j < PER; ++j)
          xk[u][j] = value16<F>(rk[u][j]), xv[u][j] = value16<F>(rv[u][j]);
    } else {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/true, h, t[u], T, d0,
                              d0 + PER, xk[u]);
        decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/false, h, t[u], T, d0,
                              d0 + PER, xv[u]);
      }
    }
    float score[U];
    float mn = m;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float dot = 0.f;
#pragma unroll
      for (int j = 0; j < PER; ++j) dot = fmaf(qv[j], xk[u][j], dot);
#pragma unroll
      for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      score[u] = live[u] ? dot * pr.softmax_scale : -INFINITY;
      mn = fmaxf(mn, score[u]);
      if (pr.scores && lane == 0 && live[u])
        pr.scores[(size_t(b) * pr.q_heads + qh) * pr.score_stride + i + u * kWarps] = score[u];
    }
    // Token i is kept, so mn is finite; expf(-inf) = 0 at the first step and for left-out
    // tokens.
    const float rescale = expf(m - mn);
    sum *= rescale;
#pragma unroll
    for (int j = 0; j < PER; ++j) acc[j] *= rescale;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (!live[u]) continue;  // the same for every lane; 0 * a non-finite value would be NaN
      const float w = expf(score[u] - mn);
#pragma unroll
      for (int j = 0; j < PER; ++j) acc[j] = fmaf(w, xv[u][j], acc[j]);
      sum += w;
    }
    m = mn;
  }
  merge_warps(m, sum, acc, PER, d0, pr, b, qh);
}

// The loop a problem takes, as run(U, F, PER) with std::integral_constant arguments, so that the
// launcher and the emulating test launch the same kernels: retained_decode_multi<U, F, PER> for
// tokens_per_step U of 2 or 4 at head_dim 64 or 128 (the shapes pages are appended at), else
// U = 0: the one-token loop, retained_decode_kernel (F and PER then mean nothing).
template <class Run>
void with_loop(const RetainedProblem& pr, const PagedKvStore& s, Run&& run) {
  auto multi = [&](auto u) {
    bool ran = false;
    KVB_DISPATCH_FORMAT(s.format, F, KVB_DISPATCH_HEAD_DIM(pr.head_dim, D, {
                          run(u, std::integral_constant<KvFormat, F>{},
                              std::integral_constant<int, D / 32>{});
                          ran = true;
                        }))
    return ran;
  };
  const bool ran = (pr.tokens_per_step == 4 && multi(std::integral_constant<int, 4>{})) ||
                   (pr.tokens_per_step == 2 && multi(std::integral_constant<int, 2>{}));
  if (!ran)
    run(std::integral_constant<int, 0>{}, std::integral_constant<KvFormat, KvFormat::kFp16>{},
        std::integral_constant<int, 0>{});
}

}  // namespace
}  // namespace kvbench::kernels::retained_device
