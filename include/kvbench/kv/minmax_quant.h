// The asymmetric min-max quantization layer that KIVI and GEAR share (KIVI's rule):
//   s = (max - min) / (2^b - 1), q = clamp(round((x - min) / s), 0, 2^b - 1), x^ = q s + min,
// with s and min rounded to the storage dtype before the codes are computed, so the error bound
// refers to what is stored. Codes of 2, 4 or 8 bits are packed little end first within a byte.
// Two layouts of a block of one KV head's tokens x [n, head_dim]:
//   per channel (KIVI keys): each channel over groups of G consecutive tokens (the last group
//     of a block may be shorter); one scale/min row of head_dim values per token group;
//   per token (KIVI values): each token over groups of G consecutive channels; one scale/min
//     row of head_dim / G values per token.
// `skip` (optional, [n, head_dim], non-zero = skip) leaves values out of their group's min
// and max: GEAR's outliers, which are stored exactly and whose codes are never read.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kvbench::minmax {

// Rounds through the storage dtype (float16, bfloat16; float32 unchanged).
float round_to(at::ScalarType dtype, float x);

inline void put_code(uint8_t* row, int64_t j, int bits, int code) {
  switch (bits) {
    case 8:
      row[j] = static_cast<uint8_t>(code);
      return;
    case 4:
      row[j >> 1] |= static_cast<uint8_t>(code << ((j & 1) * 4));
      return;
    default:
      row[j >> 2] |= static_cast<uint8_t>(code << ((j & 3) * 2));
      return;
  }
}

inline int get_code(const uint8_t* row, int64_t j, int bits) {
  switch (bits) {
    case 8:
      return row[j];
    case 4:
      return (row[j >> 1] >> ((j & 1) * 4)) & 0xF;
    default:
      return (row[j >> 2] >> ((j & 3) * 2)) & 0x3;
  }
}

// Block quantization. x: [n, head_dim] fp32 (row stride head_dim); codes: n rows of
// head_dim * bits / 8 bytes, `code_stride` bytes apart, zeroed by the caller; scales and mins:
// fp32 holding dtype-rounded values, [ceil(n / group), head_dim] per channel or
// [n, head_dim / group] per token.
void quantize_per_channel(const float* x, int64_t n, int64_t head_dim, int64_t group, int bits,
                          at::ScalarType dtype, const uint8_t* skip, uint8_t* codes,
                          int64_t code_stride, float* scales, float* mins);
void quantize_per_token(const float* x, int64_t n, int64_t head_dim, int64_t group, int bits,
                        at::ScalarType dtype, const uint8_t* skip, uint8_t* codes,
                        int64_t code_stride, float* scales, float* mins);

// One token row reconstructed. Per channel: s, m are its group's rows [head_dim]; per token:
// its rows [head_dim / group].
inline void dequantize_per_channel(const uint8_t* codes, const float* s, const float* m,
                                   int64_t head_dim, int bits, float* out) {
  for (int64_t c = 0; c < head_dim; ++c) out[c] = get_code(codes, c, bits) * s[c] + m[c];
}
inline void dequantize_per_token(const uint8_t* codes, const float* s, const float* m,
                                 int64_t head_dim, int64_t group, int bits, float* out) {
  const int64_t groups = head_dim / group;
  for (int64_t g = 0; g < groups; ++g) {
    const float sg = s[g], mg = m[g];
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      out[i] = get_code(codes, i, bits) * sg + mg;
    }
  }
}

}  // namespace kvbench::minmax
