// The decode kernels' code-to-fp16 arithmetic (kernels/code_pairs.h), run on the CPU: random
// slices packed as the KV formats pack them, each pair built as the kernel builds it (one
// LOP3 = AND then OR, on the word or the word shifted right by 8) and decoded as fp16. Every
// pair must read base + code in both halves, the codes must be the elements pair_elements()
// names, and the pairs of a slice must cover each element once.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <vector>

#include "code_pairs.h"
#include "kv_encode.h"

namespace kvbench {
namespace {

namespace c = kernels::codes;

// The format's packing: element d at bit (d mod (8 / bits)) * bits of byte d / (8 / bits).
int code_at(const std::vector<uint8_t>& bytes, int bits, int d) {
  const int per_byte = 8 / bits;
  return (bytes[d / per_byte] >> ((d % per_byte) * bits)) & ((1 << bits) - 1);
}

// The words a lane holds: little-endian 32-bit loads; a 2-byte slice spread to bytes 0 and 2.
std::vector<uint32_t> words_of(const std::vector<uint8_t>& bytes) {
  if (bytes.size() == 2) return {uint32_t(bytes[0]) | (uint32_t(bytes[1]) << 16)};
  std::vector<uint32_t> w(bytes.size() / 4);
  for (size_t i = 0; i < bytes.size(); ++i) w[i / 4] |= uint32_t(bytes[i]) << (8 * (i % 4));
  return w;
}

float half_of(uint32_t pair, int hi) {
  return kernels::encode::half_value(uint16_t(hi ? pair >> 16 : pair & 0xffff));
}

void check_slice(int bits, int nbytes, uint32_t offset, std::mt19937& rng) {
  SCOPED_TRACE("bits " + std::to_string(bits) + ", " + std::to_string(nbytes) + " bytes, offset " +
               std::to_string(offset));
  std::vector<uint8_t> bytes(nbytes);
  for (auto& b : bytes) b = uint8_t(rng());
  const std::vector<uint32_t> w = words_of(bytes);
  const int elements = nbytes * 8 / bits, pairs = elements / 2, per_word = c::pairs_per_word(bits);
  std::set<int> seen;
  for (int p = 0; p < pairs; ++p) {
    const int j = p / per_word, i = p % per_word;
    const uint32_t x = c::pair_high_bytes(bits, i) ? w[j] >> 8 : w[j];
    const uint32_t v = (x & c::pair_mask(bits, i)) | c::pair_magic(bits, i);  // the LOP3
    const uint32_t base = c::pair_base_bits(bits, i, offset);
    const c::PairElements e = c::pair_elements(bits, nbytes, p);
    ASSERT_LT(e.y, elements) << "pair " << p;
    for (int hi = 0; hi < 2; ++hi) {
      const int d = hi ? e.y : e.x;
      // The HSUB2 is exact: both are integers below 2048 with the same or a finer ulp.
      EXPECT_EQ(half_of(v, hi) - half_of(base, hi), float(code_at(bytes, bits, d)) - float(offset))
          << "pair " << p << " element " << d;
      EXPECT_TRUE(seen.insert(d).second) << "element " << d << " twice";
    }
  }
  EXPECT_EQ(int(seen.size()), elements);
}

TEST(CodePairsTest, EachPairReadsItsTwoCodesExactly) {
  std::mt19937 rng(7);
  for (int rep = 0; rep < 50; ++rep) {
    for (int nbytes : {4, 8, 16}) {
      check_slice(4, nbytes, 0, rng);  // KIVI-4, q4_1
      check_slice(4, nbytes, 8, rng);  // q4_0: codes store q + 8
      check_slice(2, nbytes, 0, rng);  // KIVI-2, q2_1
    }
    check_slice(2, 2, 0, rng);  // a 16-bit slice (2-bit values at head_dim 64)
  }
}

TEST(CodePairsTest, EveryCodeAtEveryPositionReadsBasePlusCode) {
  for (int bits : {2, 4}) {
    for (int i = 0; i < c::pairs_per_word(bits); ++i) {
      const int s = c::pair_shift(bits, i);
      for (uint32_t code = 0; code < (1u << bits); ++code) {
        const uint32_t word = (code << s) | (code << (s + 16));
        const uint32_t v = (word & c::pair_mask(bits, i)) | c::pair_magic(bits, i);
        for (int hi = 0; hi < 2; ++hi)
          EXPECT_EQ(half_of(v, hi), float(1 << (10 - s)) + float(code))
              << bits << "-bit code " << code << " at bit " << s;
      }
    }
  }
}

}  // namespace
}  // namespace kvbench
