// The device code of kernels/thin_qr.cu (its design is in thin_qr.h): the body of its one
// kernel. A header so that a CPU test runs exactly this code with emulated threads and barriers
// (tests/unit/thin_qr_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc, or by a host
// compiler that defines KVB_KERNEL_EMULATED and the names the emulation gives.
#pragma once

#include "thin_qr.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "thin_qr_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::thin_qr_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

// The block's sum of each thread's `v` (thin_qr_tree's order); every thread gets it.
__device__ __forceinline__ double block_sum(double v, double* partial) {
  const int t = threadIdx.x;
  partial[t] = v;
  __syncthreads();
  for (int half = kThinQrThreads / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    __syncthreads();
  }
  const double sum = partial[0];
  __syncthreads();  // every thread has read it before the next sum writes partial
  return sum;
}

// Block b orthonormalizes matrix b's columns. Thread t owns rows t, t + kThinQrThreads, ...
// throughout, so a column's updates race with nothing: threads meet only in the sums.
__device__ __forceinline__ void qr_body(const ThinQrProblem& p) {
  __shared__ double partial[kThinQrThreads];
  const int n = p.rows, r = p.cols, t = threadIdx.x;
  float* x = p.x + size_t(blockIdx.x) * n * r;
  for (int j = 0; j < r; ++j) {
    double s = 0.0;
    for (int k = t; k < n; k += kThinQrThreads)
      s = fma(double(x[size_t(k) * r + j]), double(x[size_t(k) * r + j]), s);
    const double original = block_sum(s, partial);
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < j; ++i) {
        s = 0.0;
        for (int k = t; k < n; k += kThinQrThreads)
          s = fma(double(x[size_t(k) * r + i]), double(x[size_t(k) * r + j]), s);
        const float dot = float(block_sum(s, partial));
        for (int k = t; k < n; k += kThinQrThreads)
          x[size_t(k) * r + j] = fmaf(-dot, x[size_t(k) * r + i], x[size_t(k) * r + j]);
      }
    s = 0.0;
    for (int k = t; k < n; k += kThinQrThreads)
      s = fma(double(x[size_t(k) * r + j]), double(x[size_t(k) * r + j]), s);
    const double inv = thin_qr_inverse_norm(block_sum(s, partial), original);
    for (int k = t; k < n; k += kThinQrThreads)
      x[size_t(k) * r + j] = float(double(x[size_t(k) * r + j]) * inv);
  }
}

}  // namespace
}  // namespace kvbench::kernels::thin_qr_device
