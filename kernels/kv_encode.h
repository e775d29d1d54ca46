// Encoders of the kv_format.h formats, one unit (a block, a group, a channel of a page) at a
// time, compiled for the host and the device alike: the quantize-on-append kernel and its
// host reference (kv_append.h) run this same code, so a GPU-written cache is byte-identical to
// a host-written one. The formulas are the CPU codecs' (src/kv: block_quant_codec,
// minmax_quant, fp8_codec); tests/unit/kv_append_test.cpp checks the conversions against
// c10's and the codecs', and whole caches against the independent paged_cache_builder.
//
// Float conversions are done in integer arithmetic (round to nearest, ties to even) rather
// than with intrinsics, and products that feed a rounding are written as explicit
// single-rounding operations, because nvcc contracts a * b + c into one FMA where the host
// rounds twice: one code in a few million would differ.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kv_format.h"  // KVB_HD

namespace kvbench::kernels::encode {

KVB_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}

KVB_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// a * b and a + b, each rounded once (never fused into an FMA by nvcc).
KVB_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
KVB_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// min and max that carry a NaN through (from either side), so a group holding one is known by
// its min or max.
KVB_HD float min_f(float a, float b) { return (b < a || b != b) ? b : a; }
KVB_HD float max_f(float a, float b) { return (a < b || b != b) ? b : a; }
// Finite: not NaN, not infinite (x - x is NaN for both).
KVB_HD bool finite_f(float x) { return x - x == 0.f; }
constexpr uint16_t kHalfNaN = 0x7e00;
KVB_HD int clamp_i(int x, int lo, int hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Rounds `m >> shift` to nearest, ties to even (shift in 1..31).
KVB_HD uint32_t shift_round_even(uint32_t m, int shift) {
  const uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  return r + ((rem > half || (rem == half && (r & 1))) ? 1u : 0u);
}

// IEEE binary16: overflow to infinity, subnormals kept, NaN stays NaN.
KVB_HD uint16_t half_bits(float x) {
  const uint32_t f = float_bits(x), sign = (f >> 16) & 0x8000u, a = f & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to infinity
  const int e = int(a >> 23);
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  if (e >= 113) {  // normal in fp16: 2^-14 <= |x|; the carry of the rounding may bump the exponent
    const uint32_t h = (uint32_t(e - 112) << 10) | ((a & 0x7fffffu) >> 13);
    const uint32_t rem = a & 0x1fffu;
    return uint16_t(sign | (h + ((rem > 0x1000u || (rem == 0x1000u && (h & 1))) ? 1u : 0u)));
  }
  if (e < 102) return uint16_t(sign);  // below half the smallest subnormal (2^-25): zero
  return uint16_t(sign | shift_round_even(m, 126 - e));  // units of 2^-24
}

KVB_HD float half_value(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_float(sign | ((e + 112) << 23) | (m << 13));
  return bits_float(sign | float_bits(float(m) * 5.9604644775390625e-8f));  // m * 2^-24, exact
}

KVB_HD uint16_t bf16_bits(float x) {
  const uint32_t f = float_bits(x);
  if ((f & 0x7fffffffu) > 0x7f800000u) return uint16_t((f >> 16) | 0x40u);  // quiet NaN
  return uint16_t((f + 0x7fffu + ((f >> 16) & 1u)) >> 16);
}

KVB_HD float bf16_value(uint16_t h) { return bits_float(uint32_t(h) << 16); }

// fp8 e4m3fn (bias 7, no infinity, 0x7f NaN), saturating to +-448 like the CPU codec.
KVB_HD uint8_t e4m3_bits(float x) {
  const uint32_t f = float_bits(x), sign = (f >> 24) & 0x80u, a = f & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7f;
  if (a >= 0x43e00000u) return uint8_t(sign | 0x7eu);  // >= 448
  const int e = int(a >> 23);
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  if (e >= 121) {  // normal in e4m3: 2^-6 <= |x| < 448 (464 and up would round past 448)
    const uint32_t c = shift_round_even((uint32_t(e - 120) << 23) | (a & 0x7fffffu), 20);
    return uint8_t(sign | (c > 0x7eu ? 0x7eu : c));
  }
  if (e < 117) return uint8_t(sign);  // below half the smallest subnormal (2^-10): zero
  return uint8_t(sign | shift_round_even(m, 141 - e));  // units of 2^-9
}

KVB_HD float e4m3_value(uint8_t c) {
  const int e = (c >> 3) & 0xf, m = c & 7;
  float v;
  if (e == 0xf && m == 7) return bits_float(0x7fc00000u);
  if (e == 0)
    v = float(m) * 0.001953125f;  // m * 2^-9
  else
    v = bits_float(uint32_t(e + 120) << 23 | uint32_t(m) << 20);
  return (c & 0x80) ? -v : v;
}

// Sets the `bits`-wide code of channel d in a packed row (channel d at bit (d mod (8 / bits))
// * bits of byte d / (8 / bits)). The caller owns the whole byte: no other writer touches it.
KVB_HD void put_code(uint8_t* row, int d, int bits, int code) {
  const int per = 8 / bits, shift = (d % per) * bits;
  uint8_t& byte = row[d / per];
  byte = uint8_t((byte & ~(((1 << bits) - 1) << shift)) | (code << shift));
}

KVB_HD void put_u16(void* base, size_t index, uint16_t v) {
  static_cast<uint16_t*>(base)[index] = v;
}

// q8_0 (int8) and q4_0 (int4): one block of 32 channels. d = |extreme| / 127, q = round(x / d)
// (int8, signed codes); d = extreme / -8, q = trunc(x / d + 8.5) clamped to 15 (int4, channel
// 2i in the low nibble of byte i). Codes against the fp16-rounded d; a zero block has d = 0.
//   x: [32] floats;  codes: the block's 32 (int8) or 16 (int4) bytes;  d: its fp16 scale
// A block holding a value that is not finite, or whose d overflows fp16, stores d = NaN and
// zero codes: it reads back NaN, as the CPU codecs' (block_quant_codec.cpp).
KVB_HD void encode_q_block(bool int8, const float* x, uint8_t* codes, uint16_t* d_out) {
  float extreme = x[0];
  bool finite = finite_f(x[0]);
  for (int i = 1; i < 32; ++i) {
    finite = finite && finite_f(x[i]);
    if (fabsf(x[i]) > fabsf(extreme)) extreme = x[i];
  }
  const uint16_t dh = half_bits(int8 ? fabsf(extreme) / 127.0f : extreme / -8.0f);
  if (!finite || !finite_f(half_value(dh))) {
    *d_out = kHalfNaN;
    for (int i = 0; i < 32; ++i) {
      if (int8)
        codes[i] = 0;
      else
        put_code(codes, i, 4, 0);
    }
    return;
  }
  const float d = half_value(dh), inv = d != 0.f ? 1.0f / d : 0.0f;
  *d_out = dh;
  for (int i = 0; i < 32; ++i) {
    if (int8) {
      codes[i] = uint8_t(int8_t(clamp_i(int(rintf(mul_rn(x[i], inv))), -127, 127)));
    } else {
      const int q = clamp_i(int(add_rn(mul_rn(x[i], inv), 8.5f)), 0, 15);
      put_code(codes, i, 4, q);
    }
  }
}

// KIVI's min-max rule (src/kv/minmax_quant.cpp): the min rounded to fp16 first, the scale
// from it, codes round((x - min) / scale) clamped to [0, levels]; a constant group has
// scale 0 and every code 0. A group whose min or max is not finite (min_f/max_f carry a NaN),
// or whose min or scale overflows fp16, stores NaN for both and zero codes: it reads back NaN.
struct MinMax {
  uint16_t scale_h, min_h;
  float min, inv;
  KVB_HD MinMax(float lo, float hi, int levels) {
    min_h = half_bits(lo);
    min = half_value(min_h);
    scale_h = half_bits((hi - min) / float(levels));
    const float s = half_value(scale_h);
    if (!finite_f(lo) || !finite_f(hi) || !finite_f(min) || !finite_f(s)) {
      scale_h = min_h = kHalfNaN;
      min = 0.f, inv = 0.f;
      return;
    }
    inv = s != 0.f ? 1.0f / s : 0.0f;
  }
  KVB_HD int code(float x, int levels) const {
    const float q = mul_rn(x - min, inv);
    return finite_f(q) ? clamp_i(int(rintf(q)), 0, levels) : 0;
  }
};

// q4_1 and q2_1: one block of 32 channels by the min-max rule above (the CPU codecs'
// asymmetric rule: m = fp16(min), d = fp16((max - m) / levels), codes round((x - m) / d)).
//   x: [32] floats;  codes: the block's 32 * bits / 8 bytes;  scale_min: its (d, m)
KVB_HD void encode_asym_block(int bits, const float* x, uint8_t* codes, uint16_t* scale_min) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < 32; ++i) lo = min_f(lo, x[i]), hi = max_f(hi, x[i]);
  const int levels = (1 << bits) - 1;
  const MinMax mm(lo, hi, levels);
  scale_min[0] = mm.scale_h;
  scale_min[1] = mm.min_h;
  for (int i = 0; i < 32; ++i) put_code(codes, i, bits, mm.code(x[i], levels));
}

}  // namespace kvbench::kernels::encode
