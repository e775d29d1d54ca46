// 16-bit queries and outputs (the retained-index and Palu kernels' q16 and out16): values as
// their bits, bf16 or fp16 rounded to nearest even, and the bits' exact values; a 16-bit
// output against the fp32 one it must equal once rounded. Host-only.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kv_encode.h"

namespace kvbench::gpu_test {

inline std::vector<uint16_t> bits16(const std::vector<float>& x, bool bf16) {
  std::vector<uint16_t> out;
  for (const float v : x)
    out.push_back(bf16 ? kernels::encode::bf16_bits(v) : kernels::encode::half_bits(v));
  return out;
}
inline std::vector<float> values16(const std::vector<uint16_t>& x, bool bf16) {
  std::vector<float> out;
  for (const uint16_t v : x)
    out.push_back(bf16 ? kernels::encode::bf16_value(v) : kernels::encode::half_value(v));
  return out;
}

// Every 16-bit output is the fp32 output over the same query values rounded once, bit for bit
// (the same code in the same order), and the fp32 outputs were all written.
inline void expect_rounded(const std::vector<float>& got32, const std::vector<uint16_t>& got16,
                           bool bf16) {
  const std::vector<uint16_t> want = bits16(got32, bf16);
  ASSERT_EQ(got16.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got32[i])) << "output " << i;
    ASSERT_EQ(got16[i], want[i]) << "output " << i << " (fp32 " << got32[i] << ")";
  }
}

}  // namespace kvbench::gpu_test
