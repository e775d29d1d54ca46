// Inner kernels of the fused CPU decode attention that read stored formats in registers, with
// no fp32 staging buffer: fp16/bf16/fp32 rows converted inside the dot products, and blockwise
// integer codes (q8_0, q4_0, q4_1, q2_1, KIVI's per-token values) read straight from the codes.
// Key scores of integer formats can run as integer dot products against a query quantized once
// per step to int8 blocks of 32 (llama.cpp's q8 x q4 scheme):
//   q . k = sum_b dq_b (dk_b sum_i cq_i ck_i + off_b sum_i cq_i),  off = min - zero * dk
// which changes the numerics by the query's rounding only (see quantize_q8). Every kernel has a
// portable version and AVX2 (and AVX-512 VNNI) clones picked at run time. Kernels know nothing
// of libtorch: raw pointers, strides and counts.
#pragma once

#include <cstdint>

namespace kvbench::simd {

// Stored float dtypes the kernels convert in registers (fp16 and bf16 as uint16_t bit patterns).
enum class RowType { kFloat16, kBFloat16, kFloat32 };

// Query rows quantized for integer dot products: per row, blocks of kQ8Block values as int8
// codes c = round(x / d) in [-127, 127] with d = amax / 127 (fp32), so |x - d c| <= d / 2.
constexpr int64_t kQ8Block = 32;
struct Q8Rows {
  const int8_t* codes;  // [rows, n]
  const float* scales;  // [rows, n / kQ8Block]: d
  const float* dsums;   // [rows, n / kQ8Block]: d * sum of the block's codes
};
// x: [rows, n] fp32, n a multiple of kQ8Block; writes codes, scales and dsums as Q8Rows says.
void quantize_q8(const float* x, int64_t rows, int64_t n, int8_t* codes, float* scales,
                 float* dsums);

// `len` consecutive token rows of blockwise codes: row t's `n` codes of `bits` bits (8, 4, 2;
// packed low bits first) at codes + t * n * bits / 8; value_i = (c_i - zero) * d_g + m_g for
// group g = i / group, with d and m given as fp32 [len, n / group] (m may be null: 0).
struct CodeRows {
  const uint8_t* codes;
  const float* d;
  const float* m;
  int bits, zero;
  int64_t group, n;
};

// Integer key scores: scores[r * stride + t] = sum_b dq_rb (d_tb sum_i cq_ri c_ti + off_tb
// sum_i cq_ri) for r < rows, t < len; needs group % kQ8Block == 0. The integer sums are exact;
// only the fp32 combination of the block terms rounds.
void q8_scores(const CodeRows& k, int64_t len, const Q8Rows& q, int64_t rows, float* scores,
               int64_t stride);
// Value accumulation from the codes: out[r * n + i] += sum_t p[r * stride + t] * value_ti for
// r < rows (the dequantized values are formed in registers only).
void codes_weighted_sum(const CodeRows& v, int64_t len, const float* p, int64_t rows,
                        int64_t stride, float* out);
// Value accumulation with int8 weights (the `value_int8` option of the block formats and
// KIVI): per tile of kValueTile tokens (tiles start at the call's first token), query row r and
// scale group g, the weights w_t = p[r * stride + t] d_tg are quantized to int8,
//   u_t = round(w_t / s), s = max_t |w_t| / 127, so |w_t - s u_t| <= s / 2,
// and the codes are summed against them exactly in int32 (vpdpbusd over 4 tokens' codes), while
// the offsets stay in fp32:
//   out[r, i] += sum_tiles s sum_t u_t c_ti + sum_t p[r, t] (m_tg - zero d_tg)
// Against codes_weighted_sum: |delta_ri| <= sum_tiles (s / 2) sum_{t in tile} c_ti (plus fp32
// rounding); see docs/methods.md. Runs where value_int8_supported() says so; elsewhere it is
// codes_weighted_sum (exact weights).
constexpr int64_t kValueTile = 32;
bool value_int8_supported(const CodeRows& v);
void codes_weighted_sum_int8(const CodeRows& v, int64_t len, const float* p, int64_t rows,
                             int64_t stride, float* out);
// KIVI's quantized values in their tiled layout (kivi_codec.h):
//   codes: quads of 4 tokens, kValueQuad * n * bits / 8 bytes each; dword (w, i) of quad q (at
//          byte 64 w + 4 i) holds in byte j the codes of token 4 q + j for the channels
//          16 (8 / bits) w + 16 s + i, code s in bits [bits s, bits (s + 1)) of the byte;
//   d, m:  scales and mins (stored dtype `meta`, converted in registers) in tiles of
//          kValueMetaTile tokens, [group][16] per tile, from the head's tile 0.
// So one 64-byte load holds 4 tokens' codes for 16 (8 / bits) channels, a shift and a mask give
// vpdpbusd its 4 tokens per 32-bit lane and channels lie in natural order in the accumulators.
// out[r * n + i] += sum_t p[r * stride + (t - t0)] value_ti for t in [t0, t1). With value_int8
// the weights are quantized as in codes_weighted_sum_int8, but per absolute tile of kValueTile
// tokens (tiles at multiples of 32, cut to [t0, t1)), with the same bound; without, exactly
// (fp32 weights p d, codes converted to fp32).
constexpr int64_t kValueQuad = 4, kValueMetaTile = 16;
struct KiviValueTiles {
  const uint8_t* codes;  // quad 0 of the head
  const void* d;
  const void* m;
  RowType meta;
  int bits;
  int64_t group, n;
};
// Whether kivi_value_sum runs for this shape here (AVX-512 VNNI, group a multiple of 16, n of
// 16 (8 / bits) up to 256); elsewhere the store un-tiles tokens for the per-token kernels.
bool kivi_value_sum_supported(int bits, int64_t group, int64_t n);
void kivi_value_sum(const KiviValueTiles& v, int64_t t0, int64_t t1, const float* p, int64_t rows,
                    int64_t stride, float* out, bool value_int8);

// Float scores from the codes (no query quantization): scores[r * stride + t] =
// sum_i q[r * n + i] * value_ti. For formats whose scales fold into the query (KIVI's
// per-channel keys pass d = null, zero = 0 and fold the scale into q and the min into a
// constant the caller adds).
void codes_scores(const CodeRows& k, int64_t len, const float* q, int64_t rows, float* scores,
                  int64_t stride);

// Keys quantized per channel over groups of tokens (KIVI): `len` token rows of packed codes
// (as in CodeRows, 4 or 2 bits, no token scales), and per token group one fp32 row of channel
// scales s and one of mins z. Token t (t < len) belongs to group g = (lead + t) / group, whose
// rows are s + g * n and z + g * n (so `lead`, 0 <= lead < group, is how many tokens of the
// first group come before the first row).
struct ChannelGroupRows {
  const uint8_t* codes;
  const float* s;
  const float* z;
  int bits;
  int64_t group, n, lead;
};
// scores[r * stride + t] = sum_i q[r * n + i] (s_gi c_ti + z_gi), computed per group as
// sum_i (q_i s_gi) c_ti + sum_i q_i z_gi: the scaled query q' = q o s is formed once per group
// (in fp32), and the constant once per group. With `query_int8` q' is quantized to int8 blocks
// of kQ8Block per group (d'_b = max_{i in b} |q'_i| / 127, c = round(q' / d'_b)) and the codes
// are scored as integer dot products (AVX-512 VNNI: 16 tokens in the lanes of one vector), so
//   |delta_t| <= sum_b (d'_b / 2) sum_{i in b} c_ti     (plus fp32 rounding)
// against the fp32 path; n a multiple of kQ8Block for query_int8 (see docs/methods.md, "KIVI
// keys as integers").
void channel_scores(const ChannelGroupRows& k, int64_t len, const float* q, int64_t rows,
                    float* scores, int64_t stride, bool query_int8);
// The same keys stored in tiles of kKeyTile tokens so that one 64-byte load gives one 32-bit
// code word of 16 consecutive tokens, token j in lane j (needs n * bits % 32 == 0). Token rows
// are as in ChannelGroupRows, `words` = n * bits / 32 dwords each; tile k holds tokens
// [16 k, 16 k + 16) word-major: word w of token 16 k + j is dword w * 16 + j of the tile, so a
// tile has the bytes of 16 rows. Token t (absolute, from 0) belongs to group g = t / group,
// whose scale and min rows are rows g of s and z, stored in dtype `meta` (the AVX-512 kernel
// converts them in registers and prefetches them with the codes).
constexpr int64_t kKeyTile = 16;
struct KiviKeyTiles {
  const uint8_t* codes;  // the head's tile 0: [tiles][words][kKeyTile] dwords
  const void* s;         // the head's group 0: [groups, n]
  const void* z;         // [groups, n]
  RowType meta;
  int bits;
  int64_t group, n;
};
// scores[r * stride + t - t0] for tokens t in [t0, t1) (any t0, t1: tiles may be cut at both
// ends) as channel_scores computes them, with the same bound for query_int8: per token group
// q' = q o s quantized to int8 blocks of kQ8Block, the codes scored as integers with the tile's
// words in vector lanes (AVX-512 VNNI, group a multiple of 16, n a multiple of 32 up to 256),
//   |delta_t| <= sum_b (d'_b / 2) sum_{i in b} c_ti     (plus fp32 rounding);
// it runs where kivi_key_tile_supported() says so (query_int8 only); elsewhere callers copy
// the rows out of the tiles (untile_key_rows) and run channel_scores.
bool kivi_key_tile_supported(int bits, int64_t group, int64_t n, bool query_int8);
void kivi_key_tile_scores(const KiviKeyTiles& k, int64_t t0, int64_t t1, const float* q,
                          int64_t rows, float* scores, int64_t stride, bool query_int8);
// The layout's two copies: token rows [t0, t1) (`words` dwords each, row t0 first) into their
// tiles, and back out of them.
void tile_key_rows(const uint8_t* rows, int64_t words, int64_t t0, int64_t t1, uint8_t* tiles);
void untile_key_rows(const uint8_t* tiles, int64_t words, int64_t t0, int64_t t1, uint8_t* rows);

// Float rows of a stored dtype (fp16, bf16 as uint16_t bit patterns, or fp32), `len` rows of
// `n` values, read with the conversion in registers:
//   scores[r * stride + t] = sum_i q[r * n + i] * k[t * n + i]
//   out[r * n + i] += sum_t p[r * stride + t] * v[t * n + i]
void rows_scores(RowType type, const void* k, int64_t len, int64_t n, const float* q, int64_t rows,
                 float* scores, int64_t stride);
void rows_weighted_sum(RowType type, const void* v, int64_t len, int64_t n, const float* p,
                       int64_t rows, int64_t stride, float* out);

// The instruction set the kernels run with: "avx512-vnni", "avx2" or "portable". The
// environment variable KVBENCH_SIMD=avx2|portable caps it (comparisons, tests of the fallback).
const char* kernel_isa();
// Selects the instruction set by that name for the whole process (tests run every clone the
// CPU has); false, and no change, when the CPU lacks it.
bool set_kernel_isa(const char* name);

}  // namespace kvbench::simd
