#include "kvbench/kv/simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define KVB_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define KVB_CLONES
#endif

namespace kvbench::simd {
namespace {

#if defined(__x86_64__)
__attribute__((target("avx2,f16c"))) void half_to_float_f16c(const at::Half* src, float* dst,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

const bool kHasF16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
#endif

// exp(x - shift), the polynomial both exp_shift_sum loops use for single elements:
// exp(v) = 2^k * exp(r), k = round(v / ln 2), r = v - k ln 2 in [-ln2/2, ln2/2] (Cody-Waite
// split of ln 2), exp(r) by its degree-6 Taylor polynomial. Below -87 the result is exp(-87),
// about 1.6e-38 (a -inf score's weight: nothing beside any finite one); NaN stays NaN.
inline __attribute__((always_inline)) float exp_shifted(float x, float shift) {
  float v = x - shift;
  v = v < -87.0f ? -87.0f : v;
  // round to nearest by the 1.5 * 2^23 trick (|v / ln 2| < 126): vectorises, unlike roundf
  const float k = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (v - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#if defined(__x86_64__)
const bool kAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// exp_shift_sum's polynomial 8 lanes at a time: GCC left the target_clones loop scalar (the
// sum reduction with the bit-built 2^k), which cost ~20% of a fused decode step. Same
// algorithm as the portable loop below; FMAs where that one may round twice.
__attribute__((target("avx2,fma"))) float exp_shift_sum_avx2(float* x, int64_t n, float shift) {
  const __m256 sh = _mm256_set1_ps(shift), lo = _mm256_set1_ps(-87.0f);
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f), magic = _mm256_set1_ps(12582912.0f);
  const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(2.12194440e-4f);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // max(lo, v), not max(v, lo): MAXPS returns its second operand when either is NaN, and a
    // NaN score must stay NaN (as exp_shifted and the reference's softmax keep it).
    const __m256 v = _mm256_max_ps(lo, _mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
    const __m256 k = _mm256_sub_ps(_mm256_fmadd_ps(v, log2e, magic), magic);
    const __m256 r = _mm256_fmadd_ps(k, ln2_lo, _mm256_fnmadd_ps(k, ln2_hi, v));
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    const __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float l : lanes) total += l;
  for (; i < n; ++i) {
    x[i] = exp_shifted(x[i], shift);
    total += x[i];
  }
  return total;
}

const bool kAvx512 = __builtin_cpu_supports("avx512f");

// GCC 12's AVX-512 intrinsics start from an "undefined" register and trip -Wmaybe-uninitialized
// once inlined (a known false positive; as in fused_kernels.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// The same polynomial 16 lanes at a time, the tail under a mask (no scalar loop): with the
// compressed formats' kernels at ~50 ops per token and KV head, the 8-lane loop was ~10 of them.
__attribute__((target("avx512f"))) float exp_shift_sum_avx512(float* x, int64_t n, float shift) {
  const __m512 sh = _mm512_set1_ps(shift), lo = _mm512_set1_ps(-87.0f);
  const __m512 log2e = _mm512_set1_ps(1.44269504088896341f), magic = _mm512_set1_ps(12582912.0f);
  const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(2.12194440e-4f);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_max_ps(lo, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh));
    const __m512 k = _mm512_sub_ps(_mm512_fmadd_ps(v, log2e, magic), magic);
    const __m512 r = _mm512_fmadd_ps(k, ln2_lo, _mm512_fnmadd_ps(k, ln2_hi, v));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    // 2^k by scalef: one op for the shift-and-add of the exponent bits
    const __m512 e = _mm512_scalef_ps(p, k);
    _mm512_mask_storeu_ps(x + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// x *= scale and the maximum, 16 lanes at a time with a masked tail.
__attribute__((target("avx512f"))) float scale_max_avx512(float* x, int64_t n, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), s);
    _mm512_mask_storeu_ps(x + i, k, v);
    m = _mm512_mask_max_ps(m, k, m, v);
  }
  return _mm512_reduce_max_ps(m);
}
#pragma GCC diagnostic pop

// Dot products of one query row with 8 consecutive key rows: 8 accumulators over the head
// dimension, then one transpose-add reduction for all 8 (n a multiple of 8).
__attribute__((target("avx2,fma"))) void dot8(const float* k, const float* q, int64_t n,
                                              float* out) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int j = 0; j < 8; ++j)
      acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(k + j * n + i), qv, acc[j]);
  }
  const __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
  const __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                      _mm256_permute2f128_ps(u0, u1, 0x31)));
}

__attribute__((target("avx2,fma"))) void scores_tile_avx2(const float* k, const float* q,
                                                          int64_t rows, int64_t len, int64_t n,
                                                          float* scores, int64_t stride) {
  int64_t t = 0;
  for (; t + 8 <= len; t += 8) {
    for (int64_t r = 0; r < rows; ++r) dot8(k + t * n, q + r * n, n, scores + r * stride + t);
  }
  for (; t < len; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += q[r * n + i] * k[t * n + i];
      scores[r * stride + t] = acc;
    }
  }
}

// out row r += sum_t p_t v_t, 64 output values at a time held in 8 registers.
__attribute__((target("avx2,fma"))) void weighted_sum_avx2(const float* v, const float* p,
                                                           int64_t rows, int64_t len, int64_t n,
                                                           int64_t stride, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* pr = p + r * stride;
    float* o = out + r * n;
    int64_t i0 = 0;
    // Full 64-wide blocks: a constant trip count keeps the 8 accumulators in registers.
    for (; i0 + 64 <= n; i0 += 64) {
      __m256 acc[8];
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_loadu_ps(o + i0 + 8 * j);
      for (int64_t t = 0; t < len; ++t) {
        const __m256 pt = _mm256_set1_ps(pr[t]);
        const float* vt = v + t * n + i0;
        for (int j = 0; j < 8; ++j)
          acc[j] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8 * j), acc[j]);
      }
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(o + i0 + 8 * j, acc[j]);
    }
    for (; i0 < n; i0 += 8) {  // the remaining 8-wide columns
      __m256 acc = _mm256_loadu_ps(o + i0);
      for (int64_t t = 0; t < len; ++t) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(pr[t]), _mm256_loadu_ps(v + t * n + i0), acc);
      }
      _mm256_storeu_ps(o + i0, acc);
    }
  }
}
#endif

const std::vector<float>& half_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) {
      t[i] = static_cast<float>(at::Half(static_cast<uint16_t>(i), at::Half::from_bits()));
    }
    return t;
  }();
  return table;
}

}  // namespace

void to_float(const at::Half* src, float* dst, int64_t n) {
#if defined(__x86_64__)
  if (kHasF16c) return half_to_float_f16c(src, dst, n);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void to_float(const at::BFloat16* src, float* dst, int64_t n) {
  // bf16 is the top half of an fp32: widen the bits.
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
}

void to_float(const float* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

float half_to_float(at::Half h) { return half_table()[h.x]; }

KVB_CLONES void dot_rows(const float* k, const float* q, int64_t rows, int64_t n, float* out,
                         int64_t stride) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * n;
    float acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; ++i) acc += qr[i] * k[i];
    out[r * stride] = acc;
  }
}

KVB_CLONES void axpy_rows(const float* v, const float* p, int64_t rows, int64_t stride, float* out,
                          int64_t n) {
  for (int64_t r = 0; r < rows; ++r) {
    const float w = p[r * stride];
    float* o = out + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] += w * v[i];
  }
}

void scores_tile(const float* k, const float* q, int64_t rows, int64_t len, int64_t n,
                 float* scores, int64_t stride) {
#if defined(__x86_64__)
  if (kAvx2Fma && n % 8 == 0) return scores_tile_avx2(k, q, rows, len, n, scores, stride);
#endif
  for (int64_t t = 0; t < len; ++t) dot_rows(k + t * n, q, rows, n, scores + t, stride);
}

void weighted_sum_tile(const float* v, const float* p, int64_t rows, int64_t len, int64_t n,
                       int64_t stride, float* out) {
#if defined(__x86_64__)
  if (kAvx2Fma && n % 8 == 0) return weighted_sum_avx2(v, p, rows, len, n, stride, out);
#endif
  for (int64_t t = 0; t < len; ++t) axpy_rows(v + t * n, p + t, rows, stride, out, n);
}

KVB_CLONES void dequant_row(const uint8_t* codes, const at::Half* scales, const at::Half* mins,
                            int bits, int zero, int64_t group, int64_t n, float* out) {
  const std::vector<float>& table = half_table();
  const float z = static_cast<float>(zero);
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const float d = table[scales[g0 / group].x];
    const float offset = (mins ? table[mins[g0 / group].x] : 0.0f) - z * d;
    float* o = out + g0;
    if (bits == 8) {
      const uint8_t* c = codes + g0;
#pragma omp simd
      for (int64_t i = 0; i < group; ++i) o[i] = static_cast<float>(c[i]) * d + offset;
    } else if (bits == 4) {
      const uint8_t* c = codes + g0 / 2;
#pragma omp simd
      for (int64_t i = 0; i < group / 2; ++i) {
        o[2 * i] = static_cast<float>(c[i] & 0xF) * d + offset;
        o[2 * i + 1] = static_cast<float>(c[i] >> 4) * d + offset;
      }
    } else {
      const uint8_t* c = codes + g0 / 4;
#pragma omp simd
      for (int64_t i = 0; i < group / 4; ++i) {
        o[4 * i] = static_cast<float>(c[i] & 0x3) * d + offset;
        o[4 * i + 1] = static_cast<float>((c[i] >> 2) & 0x3) * d + offset;
        o[4 * i + 2] = static_cast<float>((c[i] >> 4) & 0x3) * d + offset;
        o[4 * i + 3] = static_cast<float>(c[i] >> 6) * d + offset;
      }
    }
  }
}

KVB_CLONES float exp_shift_sum(float* x, int64_t n, float shift) {
#if defined(__x86_64__)
  if (kAvx512) return exp_shift_sum_avx512(x, n, shift);
  if (kAvx2Fma) return exp_shift_sum_avx2(x, n, shift);
#endif
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_shifted(x[i], shift);
    x[i] = e;
    sum += e;
  }
  return sum;
}

KVB_CLONES float scale_max(float* x, int64_t n, float scale) {
#if defined(__x86_64__)
  if (kAvx512 && n > 0) return scale_max_avx512(x, n, scale);
#endif
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    x[i] *= scale;
    m = x[i] > m ? x[i] : m;
  }
  return m;
}

KVB_CLONES void scale_shift(float* x, int64_t n, float scale, float offset) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * scale + offset;
}

}  // namespace kvbench::simd
