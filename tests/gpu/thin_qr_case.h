// Random inputs of the batched thin QR (kernels/thin_qr.h), shared by its CUDA test
// (tests/gpu/thin_qr_test.cpp), its emulation on the CPU (tests/unit/thin_qr_emulation_test.cpp)
// and its reference's test against LAPACK (tests/unit/thin_qr_test.cpp). Matrix b of a case:
// random normal columns of scales 1e-3..1e3, except in matrix 1 (column 1 twice column 0: it
// must come out zero; column 2 = column 0 + noise 1e-4 of its size: condition ~1e4, kept, and
// orthogonal to column 0 only after the second projection) and matrix 2
// (all zero: every column zero).
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "thin_qr.h"

namespace kvbench::gpu_test {

struct ThinQrCase {
  static constexpr int B = 4;
  int n, r;
  std::vector<float> x;  // [B, n, r]

  ThinQrCase(int rows, int cols) : n(rows), r(cols), x(size_t(B) * rows * cols) {
    std::mt19937 rng(3 + rows * 7 + cols);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < n; ++k)
        for (int j = 0; j < r; ++j)
          at(b, k, j) = normal(rng) * std::pow(10.f, float(j % 3) * 3 - 3);
    for (int k = 0; k < n; ++k) {
      if (r > 1) at(1, k, 1) = 2.f * at(1, k, 0);
      if (r > 2) at(1, k, 2) = at(1, k, 0) + 1e-7f * normal(rng);
      for (int j = 0; j < r; ++j) at(2, k, j) = 0.f;
    }
  }
  float& at(int b, int k, int j) { return x[(size_t(b) * n + k) * r + j]; }
  std::string label() const { return std::to_string(n) + " x " + std::to_string(r); }
  static constexpr float kGuard = -7.f;
  // The host reference's result, and the input with a guard after it (for a kernel's run).
  std::vector<float> reference() const {
    std::vector<float> want = x;
    kernels::thin_qr_host(problem(want.data()));
    return want;
  }
  std::vector<float> guarded() const {
    std::vector<float> v = x;
    v.push_back(kGuard);
    return v;
  }
  kernels::ThinQrProblem problem(float* data) const {
    kernels::ThinQrProblem p;
    p.batch = B, p.rows = n, p.cols = r, p.x = data;
    return p;
  }
};

// Shapes: GEAR's decode blocks (64 x 2, 64 x 4), a prefill's (700 x 4: rows past a block of
// threads, a part turn), a square one and one row per thread at most (5 x 5).
inline std::vector<std::pair<int, int>> thin_qr_shapes() {
  return {{64, 2}, {64, 4}, {700, 4}, {5, 5}, {300, 1}};
}

}  // namespace kvbench::gpu_test
