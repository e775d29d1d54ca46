// Vector helpers for the fused CPU kernels: format conversion of one row and the two inner
// loops of attention over one stored row (dot with every query of a GQA group; accumulate
// into every output row). The loops are compiled twice (x86-64-v3 with AVX2/FMA, and the
// baseline) and the loader picks the clone the CPU supports, so one binary runs everywhere.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace kvbench::simd {

void to_float(const at::Half* src, float* dst, int64_t n);
void to_float(const at::BFloat16* src, float* dst, int64_t n);
void to_float(const float* src, float* dst, int64_t n);
// fp16 -> fp32 for single values (scales, mins) through a 64K-entry table.
float half_to_float(at::Half h);

// out[r * stride] = sum_i q[r * n + i] * k[i], for r < rows
void dot_rows(const float* k, const float* q, int64_t rows, int64_t n, float* out, int64_t stride);
// out[r * n + i] += p[r * stride] * v[i], for r < rows
void axpy_rows(const float* v, const float* p, int64_t rows, int64_t stride, float* out, int64_t n);
// scores[r * stride + t] = dot(q[r, :], k[t, :]) for a tile of rows x len (k: [len, n] fp32)
// — 8 tokens per step with the accumulators in registers on AVX2/FMA machines.
void scores_tile(const float* k, const float* q, int64_t rows, int64_t len, int64_t n,
                 float* scores, int64_t stride);
// out[r, :] += sum_t p[r * stride + t] * v[t, :] for a tile (v: [len, n] fp32).
void weighted_sum_tile(const float* v, const float* p, int64_t rows, int64_t len, int64_t n,
                       int64_t stride, float* out);
// x[i] = exp(x[i] - shift), returns the sum; a polynomial exp (relative error < 2e-7 over the
// softmax range x - shift <= 0) that vectorises, unlike libm's expf.
float exp_shift_sum(float* x, int64_t n, float shift);
// Largest element of x (n >= 1), after scaling x in place by `scale`.
float scale_max(float* x, int64_t n, float scale);
// One row of `bits`-bit codes (8, 4 or 2; packed low bits first) to floats:
// out[i] = (code_i - zero) * scale_g + min_g for group g = i / group, scales and mins fp16
// (mins may be null: 0). n and group multiples of 8.
void dequant_row(const uint8_t* codes, const at::Half* scales, const at::Half* mins, int bits,
                 int zero, int64_t group, int64_t n, float* out);
// x[i] = x[i] * scale + offset
void scale_shift(float* x, int64_t n, float scale, float offset);

}  // namespace kvbench::simd
