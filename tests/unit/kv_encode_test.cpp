// The appender's float conversions (kernels/kv_encode.h, integer arithmetic shared by host
// and device) against c10's fp16/bf16 conversions and the fp8 codec's e4m3 encoder: every
// representable value, every tie between neighbours and one float ulp either side of it,
// and random bit patterns. Bit-exact: a cache written on the GPU must equal the CPU's.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <random>
#include <vector>

#include "kv_encode.h"
#include "kvbench/kv/fp8_codec.h"

namespace kvbench {
namespace {

namespace e = kernels::encode;

// Floats around every boundary where rounding changes: each value, the midpoints between
// neighbours (ties) and their float neighbours, both signs; plus random bit patterns.
template <class Decode>
std::vector<float> probe_points(int codes, Decode decode, uint32_t seed) {
  std::vector<float> xs;
  for (int c = 0; c + 1 < codes; ++c) {
    const float a = decode(c), b = decode(c + 1);
    if (!std::isfinite(a) || !std::isfinite(b) || !(a < b)) continue;
    const float mid = float((double(a) + double(b)) / 2);  // exact: a few more bits than a code
    for (float x : {a, mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY), b})
      xs.insert(xs.end(), {x, -x});
  }
  std::mt19937 rng(seed);
  for (int i = 0; i < 200000; ++i) xs.push_back(e::bits_float(uint32_t(rng())));
  xs.insert(xs.end(), {0.f, -0.f, INFINITY, -INFINITY, 1e30f, -1e-30f, 65519.f, 65520.f});
  return xs;
}

TEST(KvEncodeTest, HalfMatchesC10BitForBit) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float want = static_cast<float>(c10::Half(uint16_t(h), c10::Half::from_bits()));
    const float got = e::half_value(uint16_t(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      ASSERT_EQ(e::float_bits(got), e::float_bits(want)) << "decode of 0x" << std::hex << h;
    }
  }
  auto decode = [](int c) { return e::half_value(uint16_t(c)); };
  for (float x : probe_points(0x7c01, decode, 1)) {
    if (std::isnan(x)) {
      EXPECT_EQ(e::half_bits(x) & 0x7e00, 0x7e00);
      continue;
    }
    ASSERT_EQ(e::half_bits(x), c10::Half(x).x) << "encode of " << x;
  }
}

TEST(KvEncodeTest, Bf16MatchesC10BitForBit) {
  auto decode = [](int c) { return e::bf16_value(uint16_t(c)); };
  for (float x : probe_points(0x7f81, decode, 2)) {
    if (std::isnan(x)) continue;  // NaN payloads differ; data never holds NaN
    ASSERT_EQ(e::bf16_bits(x), c10::BFloat16(x).x) << "encode of " << x;
  }
  for (uint32_t h = 0; h < 0x10000; ++h)
    if (!std::isnan(e::bf16_value(uint16_t(h))))
      ASSERT_EQ(e::float_bits(e::bf16_value(uint16_t(h))),
                e::float_bits(
                    static_cast<float>(c10::BFloat16(uint16_t(h), c10::BFloat16::from_bits()))));
}

TEST(KvEncodeTest, E4m3MatchesTheFp8Codec) {
  for (int c = 0; c < 256; ++c) {
    const float want = e4m3_to_float(uint8_t(c)), got = e::e4m3_value(uint8_t(c));
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(got)) << c;
    else
      ASSERT_EQ(e::float_bits(got), e::float_bits(want)) << "decode of " << c;
  }
  auto decode = [](int c) { return e::e4m3_value(uint8_t(c)); };
  std::vector<float> xs = probe_points(0x7f, decode, 3);
  for (float x : {448.f, 463.9f, 464.f, 480.f, 1e9f, -500.f}) xs.push_back(x);
  for (float x : xs) ASSERT_EQ(e::e4m3_bits(x), float_to_e4m3(x)) << "encode of " << x;
}

}  // namespace
}  // namespace kvbench
