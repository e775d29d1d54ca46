// The device code of kernels/latent_decode.cu (the kernel and its block reductions). A header
// so that a CPU test runs exactly this code with emulated threads and warps
// (tests/unit/latent_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or by a
// host compiler that includes CUDA's fp16 headers, then defines KVB_KERNEL_EMULATED and the
// names the emulation gives.
#pragma once

#include <cmath>
#include <cstdint>

#include "latent_decode.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "latent_decode_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::latent_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

constexpr int kThreads = 256;

// The block's maximum (max) or sum (!max) of `v`; every thread gets it.
__device__ float block_reduce(float v, bool max, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float o = scratch[threadIdx.x + half];
      scratch[threadIdx.x] = max ? fmaxf(scratch[threadIdx.x], o) : scratch[threadIdx.x] + o;
    }
    __syncthreads();
  }
  const float r = scratch[0];
  __syncthreads();  // scratch is reused by the next reduction
  return r;
}

// Scores: a warp per token, its lanes over the token's coefficients (contiguous, so a warp
// reads a row at once), reduced with shuffles. Value sums: threads over rank, so each token's
// row is again read by consecutive threads. The host reference (latent_decode_host) sums in
// another order.
__global__ void latent_decode_kernel(LatentProblem p, float* workspace) {
  __shared__ float q_lat[kLatentMaxRank], v_lat[kLatentMaxRank], scratch[kThreads];
  const int b = blockIdx.x / p.q_heads, qh = blockIdx.x % p.q_heads, tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32, warps = kThreads / 32;
  const int T = p.seq_lens[b];
  float* w = workspace + size_t(blockIdx.x) * p.max_tokens;
  for (int i = tid; i < p.rank; i += kThreads) q_lat[i] = latent::query_component(p, b, qh, i);
  __syncthreads();
  const uint16_t* keys = latent::coefficients(p, p.k_coef, b, latent::head_of(p, qh));
  float m = -INFINITY;
  for (int t = warp; t < T; t += warps) {
    const uint16_t* c = keys + size_t(t) * p.rank;
    float dot = 0.f;
    for (int i = lane; i < p.rank; i += 32) dot = fmaf(q_lat[i], encode::half_value(c[i]), dot);
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float score = dot * p.softmax_scale;
    if (lane == 0) w[t] = score;
    m = fmaxf(m, score);
  }
  m = block_reduce(m, true, scratch);
  __syncthreads();  // the scores written by lane 0 of each warp, before any thread reads them
  float sum = 0.f;
  for (int t = tid; t < T; t += kThreads) sum += (w[t] = expf(w[t] - m));
  sum = block_reduce(sum, false, scratch);
  for (int t = tid; t < T; t += kThreads) w[t] /= sum;
  __syncthreads();  // every weight written before any thread sums over all of them
  for (int i = tid; i < p.rank; i += kThreads)
    v_lat[i] = latent::value_component(p, b, qh, w, T, i);
  __syncthreads();
  float* out = p.out + (size_t(b) * p.q_heads + qh) * p.head_dim;
  for (int d = tid; d < p.head_dim; d += kThreads) out[d] = latent::output_channel(p, qh, v_lat, d);
}

}  // namespace
}  // namespace kvbench::kernels::latent_device
