// The device code of kernels/model_ops.cu (the bodies of its three kernels and the block
// reduction). A header so that a CPU test runs exactly this code with emulated threads and
// warps (tests/unit/model_ops_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by
// nvcc, or by a host compiler that defines KVB_KERNEL_EMULATED and the names the emulation
// gives.
#pragma once

#include "model_ops.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "model_ops_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::model_ops_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

constexpr int kNormThreads = 256;
constexpr int kRopeWarps = 4;
constexpr int kElementThreads = 256;
constexpr int kMaxBlocks = 65535;

__device__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The sum of `x` over the block (every thread gets it).
__device__ float block_sum(float x) {
  __shared__ float partial[kNormThreads / 32];
  __shared__ float total;
  x = warp_sum(x);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = x;
  __syncthreads();
  if (warp == 0) {
    float y = lane < kNormThreads / 32 ? partial[lane] : 0.0f;
    y = warp_sum(y);
    if (lane == 0) total = y;
  }
  __syncthreads();
  return total;
}

// Block x: row x, LlamaRMSNorm with the residual added first (kNormThreads threads).
__device__ __forceinline__ void rms_norm_body(const RmsNormProblem& p) {
  const size_t base = size_t(blockIdx.x) * p.dim;
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x) {
    float x = load_act(p.x, base + i, p.dtype);
    if (p.residual) {
      x = round_act(x + load_act(p.residual, base + i, p.dtype), p.dtype);
      store_act(p.x, base + i, x, p.dtype);
    }
    sum_sq += x * x;
  }
  // Each thread re-reads only the elements it wrote itself, so no barrier is needed for x.
  const float s = rms_scale(block_sum(sum_sq), p.dim, p.eps);
  for (int i = threadIdx.x; i < p.dim; i += blockDim.x)
    store_act(p.out, base + i,
              rms_out(load_act(p.x, base + i, p.dtype), s, load_act(p.weight, i, p.dtype), p.dtype),
              p.dtype);
}

// Warp w of block (r, y): head 4y + w of row r (kRopeWarps warps).
__device__ __forceinline__ void rope_split_body(const RopeSplitProblem& p) {
  __shared__ float rows[kRopeWarps][kRopeMaxHeadDim];
  const int heads = p.q_heads + 2 * p.kv_heads, hd = p.head_dim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y * kRopeWarps + warp, r = blockIdx.x;
  if (h >= heads) return;  // whole warps leave; no block-wide barrier follows
  float* row = rows[warp];
  const size_t src = (size_t(r) * heads + h) * hd;
  const bool is_q = h < p.q_heads, is_k = !is_q && h < p.q_heads + p.kv_heads;
  float sum_sq = 0.0f;
  for (int d = lane; d < hd; d += 32) {
    row[d] = load_act(p.qkv, src + d, p.dtype);
    sum_sq += row[d] * row[d];
  }
  const void* norm = is_q ? p.q_norm : (is_k ? p.k_norm : nullptr);
  if (norm) {
    const float s = rms_scale(warp_sum(sum_sq), hd, p.eps);
    for (int d = lane; d < hd; d += 32)
      row[d] = rms_out(row[d], s, load_act(norm, d, p.dtype), p.dtype);
  }
  __syncwarp();
  void* dst = is_q ? p.q : (is_k ? p.k : p.v);
  const int head = is_q ? h : (is_k ? h - p.q_heads : h - p.q_heads - p.kv_heads);
  const size_t out = (size_t(r) * (is_q ? p.q_heads : p.kv_heads) + head) * hd;
  const float* cos = p.cos + size_t(r) * hd;
  const float* sin = p.sin + size_t(r) * hd;
  for (int d = lane; d < hd; d += 32) {
    const float y = is_q || is_k ? rope_out(row, d, hd, cos[d], sin[d]) : row[d];
    store_act(dst, out + d, y, p.dtype);
  }
}

// One thread per output element, grid-stride.
__device__ __forceinline__ void silu_mul_body(const SiluMulProblem& p) {
  const size_t total = size_t(p.rows) * p.dim;
  for (size_t e = size_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += size_t(gridDim.x) * blockDim.x) {
    const size_t r = e / p.dim, i = e % p.dim, in = r * 2 * p.dim + i;
    store_act(p.out, e,
              silu_mul_out(load_act(p.gate_up, in, p.dtype),
                           load_act(p.gate_up, in + p.dim, p.dtype), p.dtype),
              p.dtype);
  }
}

}  // namespace
}  // namespace kvbench::kernels::model_ops_device
