// The checks the fused per-row kernels' tests share (the CUDA kernels' in
// tests/gpu/model_ops_test.cpp, their device code emulated in
// tests/unit/model_ops_emulation_test.cpp): a kernel's outputs against the host reference's and
// float64's.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model_ops_case.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {

// RoPE's q and k within one rounding of the host reference (two with the per-head norms: their
// sums run in another order; and nvcc contracts x * cos + rotated * sin into an FMA where the
// host does not), v equal to it bit for bit, all within the dtype's bound of float64.
inline void expect_rope_split(const RopeCase& c, bool norms, const ActArray& q, const ActArray& k,
                              const ActArray& v, const ActArray& host_q, const ActArray& host_k,
                              const ActArray& host_v, const std::string& label) {
  auto doubles = [](const ActArray& a) {
    const std::vector<float> f = a.floats();
    return std::vector<double>(f.begin(), f.end());
  };
  const kernels::ActDtype t = q.dtype;
  const double tol = norms ? two_roundings(t) : one_rounding(t);
  EXPECT_LT(scaled_error(q.floats(), doubles(host_q)), tol) << label;
  EXPECT_LT(scaled_error(k.floats(), doubles(host_k)), tol) << label;
  EXPECT_EQ(v.bytes, host_v.bytes) << label;
  EXPECT_LT(scaled_error(q.floats(), c.want_q), act_tolerance(t) + 1e-6) << label;
  EXPECT_LT(scaled_error(k.floats(), c.want_k), act_tolerance(t) + 1e-6) << label;
}

}  // namespace kvbench::gpu_test
