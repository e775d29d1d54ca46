// Orthonormal columns for GEAR's power iteration (gear_low_rank: Q = qr(E P)), batched, in place:
// each matrix's r columns (r <= rows) by modified Gram-Schmidt, every column projected out of the
// earlier ones twice ("twice is enough": orthogonal to float rounding whatever the columns'
// conditioning), then normalized; a column left with under 1e-5 of its norm (dependent on the
// earlier ones, or zero) becomes zero rather than amplified noise. Q Q^T is what GEAR uses
// (its factors are Q and E^T Q), so the basis' signs, which differ from a Householder QR's, do
// not matter.
//
// Why not torch's linalg_qr: on CUDA its Q is built per matrix (cuSOLVER has no batched orgqr,
// PyTorch issue #143281: ~27 us per matrix at batch 256), and a GEAR compression fits
// sequences x KV heads matrices per side, layer and power iteration: hundreds of milliseconds
// per compression at batch 16. One block per matrix here, one launch per call.
//
// Sums are in double, with fused multiply-adds, each reduced over kThinQrThreads partial sums
// (thread t takes rows t, t + kThinQrThreads, ...) in a fixed tree: the host reference
// (thin_qr_host) adds in that same order, so the kernel matches it bit for bit.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kv_encode.h"

namespace kvbench::kernels {

constexpr int kThinQrThreads = 256;

struct ThinQrProblem {
  int batch = 0, rows = 0, cols = 0;
  float* x = nullptr;  // [batch, rows, cols] row-major, replaced by its orthonormal columns
};

inline const char* thin_qr_check(const ThinQrProblem& p) {
  if (p.batch < 1 || p.rows < 1 || p.cols < 1) return "batch, rows and cols must be positive";
  if (p.cols > p.rows) return "more columns than rows";
  if (!p.x) return "a required pointer is null";
  return "";
}

// Column j's scale after its projections: 1 / its norm, or 0 when under 1e-5 of what it was.
KVB_HD double thin_qr_inverse_norm(double squared, double original) {
  return squared > 0.0 && squared > 1e-10 * original ? 1.0 / sqrt(squared) : 0.0;
}

// The block's sum of per-thread partial sums, in the kernel's tree order.
inline double thin_qr_tree(std::vector<double>& partial) {
  for (int half = kThinQrThreads / 2; half > 0; half /= 2)
    for (int t = 0; t < half; ++t) partial[size_t(t)] += partial[size_t(t + half)];
  return partial[0];
}

// The reference: the kernel's arithmetic, one thread's rows after another.
inline void thin_qr_host(const ThinQrProblem& p) {
  const int n = p.rows, r = p.cols;
  std::vector<double> partial(kThinQrThreads);
  // sum over rows of f(row), in the kernel's order
  auto reduce = [&](auto&& f) {
    for (int t = 0; t < kThinQrThreads; ++t) {
      double s = 0.0;
      for (int k = t; k < n; k += kThinQrThreads) s = f(k, s);
      partial[size_t(t)] = s;
    }
    return thin_qr_tree(partial);
  };
  for (int b = 0; b < p.batch; ++b) {
    float* x = p.x + size_t(b) * n * r;
    for (int j = 0; j < r; ++j) {
      auto at = [&](int k, int c) -> float& { return x[size_t(k) * r + c]; };
      const double original =
          reduce([&](int k, double s) { return std::fma(double(at(k, j)), double(at(k, j)), s); });
      for (int pass = 0; pass < 2; ++pass)
        for (int i = 0; i < j; ++i) {
          const double dot = reduce(
              [&](int k, double s) { return std::fma(double(at(k, i)), double(at(k, j)), s); });
          for (int k = 0; k < n; ++k) at(k, j) = std::fmaf(-float(dot), at(k, i), at(k, j));
        }
      const double inv = thin_qr_inverse_norm(
          reduce([&](int k, double s) { return std::fma(double(at(k, j)), double(at(k, j)), s); }),
          original);
      for (int k = 0; k < n; ++k) at(k, j) = float(double(at(k, j)) * inv);
    }
  }
}

}  // namespace kvbench::kernels
