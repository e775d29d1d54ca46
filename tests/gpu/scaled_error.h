// The error measure of the kernel tests that compare float outputs with float64 ones: the
// largest |got - want| over the largest |want| (a NaN, e.g. an unwritten poisoned output,
// counts as infinitely wrong).
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvbench::gpu_test {

inline double scaled_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::isnan(got[i]) ? INFINITY : std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

}  // namespace kvbench::gpu_test
