// A decode step's weight multiplies at small batch: y = x . W^T (+ bias) for a few rows of x,
//   y[r, n] = sum_k x[r, k] W[n, k] (+ bias[n])       fp16 or bf16 in, fp32 sums, one rounding
// with W in Hugging Face's [out, in] layout. At batch 16 such a multiply streams the whole
// weight matrix for 32 flops per weight pair, so it is bound by memory, and a decode step is
// mostly these (Llama-3-8B: 16 GB of weights against 4.3 ms of attention at 16 x 8k). cuBLAS
// picks tiles made for large M there (the H200's e2e step ran its non-attention part at about half
// the copy rate, docs/perf-notes.md); the kernel (small_gemm_launcher.h) reads each weight
// once, 16 bytes per lane, and multiplies on tensor cores with the batch as the MMA's 16 rows.
// Torch-free; CUDA-free unless compiled by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model_ops.h"  // ActDtype

namespace kvbench::kernels {

constexpr int kSmallGemmMaxRows = 32;  // two MMA row tiles
constexpr int kSmallGemmChunk = 32;    // in % 32 == 0: a lane's 16-byte loads tile each row

struct SmallGemmProblem {
  int rows = 0, in = 0, out = 0;
  ActDtype dtype = ActDtype::kF16;  // of x, w, bias and y: kF16 or kBf16
  const void* x = nullptr;          // [rows, in], contiguous, 16-byte aligned
  const void* w = nullptr;          // [out, in], contiguous, 16-byte aligned
  const void* bias = nullptr;       // [out], or null
  void* y = nullptr;                // [rows, out], contiguous; may not alias x or w
  // Output columns per block: 16 or 32 (0: the launcher's choice, 32 from 8192 columns on).
  // Wider blocks read x fewer times; narrower ones give more blocks to a small `out`.
  int columns = 0;
};

// Why a problem cannot run ("" when it can); the caller multiplies another way then.
inline const char* small_gemm_check(const SmallGemmProblem& p) {
  if (p.rows < 1 || p.rows > kSmallGemmMaxRows) return "small_gemm: 1 to 32 rows";
  if (p.in < kSmallGemmChunk || p.in % kSmallGemmChunk != 0)
    return "small_gemm: in must be a positive multiple of 32";
  if (p.out < 1 || (p.out + 15) / 16 > 2147483647 / 2) return "small_gemm: out out of range";
  if (p.dtype != ActDtype::kF16 && p.dtype != ActDtype::kBf16)
    return "small_gemm: fp16 or bf16 only";
  if (p.columns != 0 && p.columns != 16 && p.columns != 32)
    return "small_gemm: columns must be 0, 16 or 32";
  if (!p.x || !p.w || !p.y) return "small_gemm: x, w and y are required";
  if (reinterpret_cast<uintptr_t>(p.x) % 16 != 0 || reinterpret_cast<uintptr_t>(p.w) % 16 != 0)
    return "small_gemm: x and w must be 16-byte aligned";
  // Both are read through the read-only cache while y is written.
  if (p.y == p.x || p.y == p.w) return "small_gemm: y may not alias x or w";
  return "";
}

// The columns per block a launch uses.
inline int small_gemm_columns(const SmallGemmProblem& p) {
  return p.columns != 0 ? p.columns : (p.out >= 8192 ? 32 : 16);
}

// The host reference (and the CPU's run of the kernel path, KVBENCH_MODEL_GEMM=kvbench in
// src/model/fused_ops.cpp): each output's fp32 sum over k in order, the bias added, one
// rounding; the kernel sums in another order (tests state the bound against float64).
inline void small_gemm_host(const SmallGemmProblem& p) {
  for (int r = 0; r < p.rows; ++r)
    for (int n = 0; n < p.out; ++n) {
      float s = 0.f;
      for (int k = 0; k < p.in; ++k)
        s += load_act(p.x, size_t(r) * p.in + k, p.dtype) *
             load_act(p.w, size_t(n) * p.in + k, p.dtype);
      if (p.bias) s += load_act(p.bias, size_t(n), p.dtype);
      store_act(p.y, size_t(r) * p.out + n, s, p.dtype);
    }
}

}  // namespace kvbench::kernels
