// The appender's float conversions (kernels/kv_encode.h, integer arithmetic shared by host
// and device) against c10's fp16/bf16 conversions and the fp8 codec's e4m3 encoder: every
// representable value, every tie between neighbours and one float ulp either side of it,
// and random bit patterns. Bit-exact: a cache written on the GPU must equal the CPU's.
#include <gtest/gtest.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>
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

// The paged formats' encoders follow the CPU codecs' rule for values that are not finite: a
// block or group holding a NaN or an infinity, or whose fp16 scale or min overflows, stores NaN
// (and zero codes) so it reads back NaN; a finite block is untouched by the rule.
TEST(KvEncodeTest, NonFiniteBlocksStoreNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 0.1f * float(i - 16);
  for (const float bad : {nan, inf, -inf}) {
    for (const int at : {0, 7}) {  // the first value (the scan's start) and a later one
      std::vector<float> y = x;
      y[at] = bad;
      for (const bool int8 : {true, false}) {
        uint8_t codes[32];
        uint16_t d = 0;
        e::encode_q_block(int8, y.data(), codes, &d);
        EXPECT_TRUE(std::isnan(e::half_value(d))) << int8 << " " << bad << " at " << at;
      }
      for (const int bits : {4, 2}) {
        uint8_t codes[16];
        uint16_t sm[2] = {0, 0};
        e::encode_asym_block(bits, y.data(), codes, sm);
        EXPECT_TRUE(std::isnan(e::half_value(sm[0])) && std::isnan(e::half_value(sm[1])))
            << bits << " bits " << bad << " at " << at;
      }
      float lo = y[0], hi = y[0];
      for (float v : y) lo = e::min_f(lo, v), hi = e::max_f(hi, v);
      const e::MinMax mm(lo, hi, 3);
      EXPECT_TRUE(std::isnan(e::half_value(mm.scale_h))) << bad << " at " << at;
      EXPECT_EQ(mm.code(bad, 3), 0);
    }
  }
  // Overflow of the fp16 scale or min: q8_0 past 127 x 65504, the asymmetric min past -65504.
  std::vector<float> big = x;
  big[3] = 1e7f;
  uint8_t codes[32];
  uint16_t d = 0;
  e::encode_q_block(true, big.data(), codes, &d);
  EXPECT_TRUE(std::isnan(e::half_value(d)));
  big[3] = -7e4f;
  uint16_t sm[2];
  e::encode_asym_block(4, big.data(), codes, sm);
  EXPECT_TRUE(std::isnan(e::half_value(sm[1])));
  // A finite block keeps a finite scale.
  e::encode_q_block(true, x.data(), codes, &d);
  EXPECT_TRUE(std::isfinite(e::half_value(d)));
  EXPECT_GT(e::half_value(d), 0.f);
}

}  // namespace
}  // namespace kvbench
