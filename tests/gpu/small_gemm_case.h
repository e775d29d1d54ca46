// Random inputs of the small-batch weight multiply (kernels/small_gemm.h) and their float64
// answers, shared by the CUDA kernel's test (tests/gpu/small_gemm_test.cpp) and the CPU test
// that runs the kernel's own device code emulated (tests/unit/small_gemm_emulation_test.cpp).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "model_ops_case.h"  // ActArray, random_act
#include "small_gemm.h"

namespace kvbench::gpu_test {

struct SmallGemmShape {
  int rows, in, out;
  bool bias;
  int columns;  // SmallGemmProblem::columns
  std::string name() const {
    return std::to_string(rows) + "x" + std::to_string(in) + "x" + std::to_string(out) +
           (bias ? "_bias" : "") + "_c" + std::to_string(columns);
  }
};

// Shapes of every path: 1 to 32 rows (one and two MMA row tiles, part tiles), columns that
// end inside a tile, `in` of one chunk to several whole rounds of the warps' chunks (32 at 16
// columns, 16 at 32) and a part round after them, both block widths.
inline std::vector<SmallGemmShape> small_gemm_shapes() {
  return {{16, 256, 48, true, 16},  {1, 64, 20, false, 0},   {5, 96, 37, true, 16},
          {17, 128, 40, false, 32}, {32, 544, 16, true, 32}, {16, 1056, 24, false, 0},
          {3, 32, 9, true, 32},     {3, 4640, 9, true, 16},  {20, 2208, 40, true, 32},
          {16, 2048, 16, false, 16}};
}

struct SmallGemmCase {
  SmallGemmShape shape;
  kernels::ActDtype dtype;
  ActArray x, w, bias;
  std::vector<double> want;   // [rows, out]: float64 sums of the (rounded) inputs, bias added
  std::vector<double> slack;  // [rows, out]: 2^-16 of each output's sum of |terms|

  SmallGemmCase(const SmallGemmShape& s, kernels::ActDtype t, uint64_t seed)
      : shape(s),
        dtype(t),
        x(random_act(t, size_t(s.rows) * s.in, seed, 0.1, 1.0)),
        w(random_act(t, size_t(s.out) * s.in, seed + 1, 0.0, 0.05)),
        bias(s.bias ? random_act(t, size_t(s.out), seed + 2, 0.0, 0.5) : ActArray(t, 0)) {
    for (int r = 0; r < s.rows; ++r)
      for (int n = 0; n < s.out; ++n) {
        double sum = s.bias ? bias.at(size_t(n)) : 0.0, size = 0;
        for (int k = 0; k < s.in; ++k) {
          const double term = double(x.at(size_t(r) * s.in + k)) * w.at(size_t(n) * s.in + k);
          sum += term;
          size += std::abs(term);
        }
        want.push_back(sum);
        slack.push_back(std::ldexp(size, -16));
      }
  }

  kernels::SmallGemmProblem problem(const void* x_ptr, const void* w_ptr, const void* bias_ptr,
                                    void* y_ptr) const {
    kernels::SmallGemmProblem p;
    p.rows = shape.rows, p.in = shape.in, p.out = shape.out, p.dtype = dtype;
    p.x = x_ptr, p.w = w_ptr, p.bias = shape.bias ? bias_ptr : nullptr, p.y = y_ptr;
    p.columns = shape.columns;
    return p;
  }
};

// Outputs further from the float64 answer than one unit in the last place of the dtype (the
// kernel rounds its fp32 sum once; the fp32 sum itself may differ by `slack`): how many, and
// the first as text. A NaN (an output never written over the poison) is always off.
inline int outputs_off(const std::vector<float>& got, const SmallGemmCase& c, std::string* first) {
  const int mantissa = c.dtype == kernels::ActDtype::kF16 ? 10 : 7;
  int off = 0;
  for (size_t i = 0; i < c.want.size(); ++i) {
    const double want = c.want[i];
    const double ulp = want == 0 ? 0 : std::ldexp(1.0, std::ilogb(want) - mantissa);
    if (!(std::abs(got[i] - want) <= ulp + c.slack[i])) {
      if (off++ == 0)
        *first = "output " + std::to_string(i) + ": " + std::to_string(got[i]) + " for " +
                 std::to_string(want);
    }
  }
  return off;
}

}  // namespace kvbench::gpu_test
