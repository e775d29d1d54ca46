// How the decode kernels turn packed 4- and 2-bit codes into fp16 pairs. Torch-free, host and
// device (a unit test checks the arithmetic on the CPU).
//
// A lane holds a slice of a row in 32-bit words. Pair i of a word takes one code from each
// 16-bit half: the codes at bit s = bits * (i mod (8 / bits)) of bytes 0 and 2, or of bytes 1
// and 3 once the word is shifted right by 8. One LOP3 keeps those bits and ORs in the fp16
// exponent of 2^(10 - s): the code then sits in the mantissa at bit s, where one unit weighs
// 2^(10 - s) * 2^-10 * 2^s = 1, so the half reads 2^(10 - s) + code exactly. Subtracting that
// base (an HSUB2) leaves the code. Shifting each code down to bit 0 first (the usual 0x6400 trick)
// costs a shift per pair; this costs one per word.
#pragma once

#include <cstdint>

#include "kv_format.h"

namespace kvbench::kernels::codes {

// The two slice elements of pair p, for a slice of `bytes` bytes of `bits`-bit codes (8- and
// 16-bit slices pair neighbours). A 2-byte slice is spread to bytes 0 and 2 of its word.
struct PairElements {
  int x, y;
};
constexpr KVB_HD PairElements pair_elements(int bits, int bytes, int p) {
  if (bits >= 8) return {2 * p, 2 * p + 1};
  if (bits == 4) return {8 * (p / 4) + p % 4, 8 * (p / 4) + p % 4 + 4};
  if (bytes >= 4) return {16 * (p / 8) + p % 8, 16 * (p / 8) + p % 8 + 8};
  return {p, p + 4};
}

// Pairs per 32-bit word.
constexpr KVB_HD int pairs_per_word(int bits) { return 16 / bits; }
// Pair i of a word reads the word shifted right by 8 (bytes 1 and 3).
constexpr KVB_HD bool pair_high_bytes(int bits, int i) { return i >= 8 / bits; }
constexpr KVB_HD int pair_shift(int bits, int i) { return bits * (i % (8 / bits)); }
// The LOP3 operands: the code bits of both halves, and the exponent of 2^(10 - s) in both.
constexpr KVB_HD uint32_t pair_mask(int bits, int i) {
  const uint32_t m = ((1u << bits) - 1u) << pair_shift(bits, i);
  return m | (m << 16);
}
constexpr KVB_HD uint32_t pair_magic(int bits, int i) {
  const uint32_t e = uint32_t(25 - pair_shift(bits, i)) << 10;  // fp16 exponent bias 15
  return e | (e << 16);
}
// The fp16 pair (both halves) to subtract so that code c reads c - offset: 2^(10 - s) +
// offset, which is what the code `offset` itself reads (offset < 2^bits), so its bits are
// the magic with the offset at bit s. A bit pattern, not a float conversion, so that the
// compiler sees a constant (cvt.rn.f16.f32 is not folded).
constexpr KVB_HD uint32_t pair_base_bits(int bits, int i, uint32_t offset = 0) {
  const uint32_t o = offset << pair_shift(bits, i);
  return pair_magic(bits, i) | o | (o << 16);
}

}  // namespace kvbench::kernels::codes
