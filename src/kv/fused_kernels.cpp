#include "kvbench/kv/fused_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kvbench::simd {
namespace {

// Per-thread scratch reused across calls, so the hot path never allocates.
template <typename T, int kSlot>
T* scratch(size_t count) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < count) buffer.resize(count);
  return buffer.data();
}

int code_at(const uint8_t* row, int64_t i, int bits) {
  switch (bits) {
    case 8:
      return row[i];
    case 4:
      return (row[i >> 1] >> ((i & 1) * 4)) & 0xF;
    default:
      return (row[i >> 2] >> ((i & 3) * 2)) & 0x3;
  }
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  uint32_t bits = sign | (exponent == 31 ? 0x7F800000u | (mantissa << 13)
                                         : ((exponent + 112) << 23) | (mantissa << 13));
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

float row_value(RowType type, const void* rows, int64_t i) {
  switch (type) {
    case RowType::kFloat16:
      return half_bits_to_float(static_cast<const uint16_t*>(rows)[i]);
    case RowType::kBFloat16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(rows)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      return f;
    }
    default:
      return static_cast<const float*>(rows)[i];
  }
}

// ---- portable versions (the oracle for the vector clones, and the path on other CPUs) ----

void q8_scores_portable(const CodeRows& k, int64_t len, const Q8Rows& q, int64_t rows,
                        float* scores, int64_t stride) {
  const int64_t n = k.n, blocks = n / kQ8Block, groups = n / k.group, row_bytes = n * k.bits / 8;
  for (int64_t t = 0; t < len; ++t) {
    const uint8_t* c = k.codes + t * row_bytes;
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* cq = q.codes + r * n;
      float s = 0;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t g = b * kQ8Block / k.group;
        int32_t isum = 0;
        for (int64_t i = b * kQ8Block; i < (b + 1) * kQ8Block; ++i)
          isum += cq[i] * code_at(c, i, k.bits);
        const float d = k.d[t * groups + g];
        const float off = (k.m ? k.m[t * groups + g] : 0.0f) - static_cast<float>(k.zero) * d;
        s +=
            q.scales[r * blocks + b] * d * static_cast<float>(isum) + off * q.dsums[r * blocks + b];
      }
      scores[r * stride + t] = s;
    }
  }
}

void codes_weighted_sum_portable(const CodeRows& v, int64_t len, const float* p, int64_t rows,
                                 int64_t stride, float* out) {
  const int64_t n = v.n, groups = n / v.group, row_bytes = n * v.bits / 8;
  for (int64_t t = 0; t < len; ++t) {
    const uint8_t* c = v.codes + t * row_bytes;
    for (int64_t g = 0; g < groups; ++g) {
      const float d = v.d ? v.d[t * groups + g] : 1.0f;
      const float off = (v.m ? v.m[t * groups + g] : 0.0f) - static_cast<float>(v.zero) * d;
      for (int64_t r = 0; r < rows; ++r) {
        const float a = p[r * stride + t] * d, b = p[r * stride + t] * off;
        float* o = out + r * n;
        for (int64_t i = g * v.group; i < (g + 1) * v.group; ++i)
          o[i] += a * code_at(c, i, v.bits) + b;
      }
    }
  }
}

void codes_scores_portable(const CodeRows& k, int64_t len, const float* q, int64_t rows,
                           float* scores, int64_t stride) {
  const int64_t n = k.n, groups = n / k.group, row_bytes = n * k.bits / 8;
  for (int64_t t = 0; t < len; ++t) {
    const uint8_t* c = k.codes + t * row_bytes;
    for (int64_t r = 0; r < rows; ++r) {
      float s = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t g = i / k.group;
        const float d = k.d ? k.d[t * groups + g] : 1.0f;
        const float off = (k.m ? k.m[t * groups + g] : 0.0f) - static_cast<float>(k.zero) * d;
        s += q[r * n + i] * (code_at(c, i, k.bits) * d + off);
      }
      scores[r * stride + t] = s;
    }
  }
}

void rows_scores_portable(RowType type, const void* k, int64_t len, int64_t n, const float* q,
                          int64_t rows, float* scores, int64_t stride) {
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      float s = 0;
      for (int64_t i = 0; i < n; ++i) s += q[r * n + i] * row_value(type, k, t * n + i);
      scores[r * stride + t] = s;
    }
  }
}

void rows_weighted_sum_portable(RowType type, const void* v, int64_t len, int64_t n, const float* p,
                                int64_t rows, int64_t stride, float* out) {
  for (int64_t t = 0; t < len; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      const float w = p[r * stride + t];
      for (int64_t i = 0; i < n; ++i) out[r * n + i] += w * row_value(type, v, t * n + i);
    }
  }
}

}  // namespace
}  // namespace kvbench::simd

// ---- x86 clones: the same source compiled for AVX2 (+FMA, F16C) and for AVX-512 VNNI ----
#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace kvbench::simd::avx2 {
#define KVB_VNNI 0
#include "fused_kernels_x86.inc"
#undef KVB_VNNI
}  // namespace kvbench::simd::avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")
// GCC 12's AVX-512 intrinsics (_mm512_cvtph_ps, the casts, the shuffles inside
// _mm512_reduce_add_ps) start from an "undefined" register and trip -Wmaybe-uninitialized or
// -Wuninitialized once inlined; a known false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
namespace kvbench::simd::vnni {
#define KVB_VNNI 1
#include "fused_kernels_x86.inc"
#include "kivi_key_kernels_x86.inc"
#include "kivi_value_kernels_x86.inc"
#undef KVB_VNNI
}  // namespace kvbench::simd::vnni
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace kvbench::simd {
namespace {

enum class Isa { kPortable, kAvx2, kVnni };

Isa detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool vnni = avx2 && __builtin_cpu_supports("avx512f") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
  if (vnni) return Isa::kVnni;
  if (avx2) return Isa::kAvx2;
#endif
  return Isa::kPortable;
}

Isa capped(Isa best, const char* name) {
  if (name && std::strcmp(name, "portable") == 0) return Isa::kPortable;
  if (name && std::strcmp(name, "avx2") == 0 && best == Isa::kVnni) return Isa::kAvx2;
  return best;
}

// The instruction set the kernels use; KVBENCH_SIMD=portable|avx2 caps it (for tests and
// comparisons).
std::atomic<Isa>& current_isa() {
  static std::atomic<Isa> chosen{capped(detect(), std::getenv("KVBENCH_SIMD"))};
  return chosen;
}
Isa isa() { return current_isa().load(std::memory_order_relaxed); }

}  // namespace

bool set_kernel_isa(const char* name) {
  const Isa best = detect();
  const Isa want = std::strcmp(name, "avx512-vnni") == 0 ? Isa::kVnni
                   : std::strcmp(name, "avx2") == 0      ? Isa::kAvx2
                   : std::strcmp(name, "portable") == 0  ? Isa::kPortable
                                                         : best;
  if (static_cast<int>(want) > static_cast<int>(best)) return false;
  current_isa().store(want);
  return true;
}

const char* kernel_isa() {
  switch (isa()) {
    case Isa::kVnni:
      return "avx512-vnni";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

void quantize_q8(const float* x, int64_t rows, int64_t n, int8_t* codes, float* scales,
                 float* dsums) {
#if defined(__x86_64__)
  if (isa() == Isa::kVnni) return vnni::quantize_q8(x, rows, n, codes, scales, dsums);
#endif
  const int64_t blocks = n / kQ8Block;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + r * n + b * kQ8Block;
      int8_t* cb = codes + r * n + b * kQ8Block;
      float amax = 0;
      for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      int32_t sum = 0;
      for (int64_t i = 0; i < kQ8Block; ++i) {
        const int c = d > 0 ? static_cast<int>(std::nearbyint(xb[i] / d)) : 0;
        cb[i] = static_cast<int8_t>(std::clamp(c, -127, 127));
        sum += cb[i];
      }
      scales[r * blocks + b] = d;
      dsums[r * blocks + b] = d * static_cast<float>(sum);
    }
  }
}

void q8_scores(const CodeRows& k, int64_t len, const Q8Rows& q, int64_t rows, float* scores,
               int64_t stride) {
#if defined(__x86_64__)
  if (k.n % kQ8Block == 0 && k.group % kQ8Block == 0) {
    if (isa() == Isa::kVnni) return vnni::q8_scores(k, len, q, rows, scores, stride);
    if (isa() == Isa::kAvx2) return avx2::q8_scores(k, len, q, rows, scores, stride);
  }
#endif
  q8_scores_portable(k, len, q, rows, scores, stride);
}

void codes_weighted_sum(const CodeRows& v, int64_t len, const float* p, int64_t rows,
                        int64_t stride, float* out) {
#if defined(__x86_64__)
  if (v.n % 16 == 0 && v.group % 16 == 0) {
    if (isa() == Isa::kVnni) return vnni::codes_weighted_sum(v, len, p, rows, stride, out);
    if (isa() == Isa::kAvx2) return avx2::codes_weighted_sum(v, len, p, rows, stride, out);
  }
#endif
  codes_weighted_sum_portable(v, len, p, rows, stride, out);
}

bool value_int8_supported(const CodeRows& v) {
  return isa() == Isa::kVnni && v.d && v.n % 64 == 0 && v.group % 32 == 0;
}

void codes_weighted_sum_int8(const CodeRows& v, int64_t len, const float* p, int64_t rows,
                             int64_t stride, float* out) {
#if defined(__x86_64__)
  if (value_int8_supported(v)) return vnni::codes_weighted_sum_int8(v, len, p, rows, stride, out);
#endif
  codes_weighted_sum(v, len, p, rows, stride, out);
}

bool kivi_value_sum_supported(int bits, int64_t group, int64_t n) {
  return isa() == Isa::kVnni && (bits == 2 || bits == 4) && group % 16 == 0 &&
         n % (128 / bits) == 0 && n <= 256;
}

void kivi_value_sum(const KiviValueTiles& v, int64_t t0, int64_t t1, const float* p, int64_t rows,
                    int64_t stride, float* out, bool value_int8) {
#if defined(__x86_64__)
  if (kivi_value_sum_supported(v.bits, v.group, v.n)) {
    return vnni::kivi_value_sum(v, t0, t1, p, rows, stride, out, value_int8);
  }
#endif
  std::abort();  // callers check kivi_value_sum_supported() first
}

void codes_scores(const CodeRows& k, int64_t len, const float* q, int64_t rows, float* scores,
                  int64_t stride) {
#if defined(__x86_64__)
  if (k.n % 16 == 0 && !k.d && !k.m && k.zero == 0 && k.bits != 8) {
    if (isa() == Isa::kVnni) return vnni::codes_scores(k, len, q, rows, scores, stride);
    if (isa() == Isa::kAvx2) return avx2::codes_scores(k, len, q, rows, scores, stride);
  }
#endif
  codes_scores_portable(k, len, q, rows, scores, stride);
}

void channel_scores(const ChannelGroupRows& k, int64_t len, const float* q, int64_t rows,
                    float* scores, int64_t stride, bool query_int8) {
#if defined(__x86_64__)
  // The AVX-512 kernels: fp32 q' for head_dim a multiple of 32; int8 q' with 16-byte row units
  // (4-bit: head_dim a multiple of 32, 2-bit: of 64) up to head_dim 256.
  if (isa() == Isa::kVnni && k.n % 32 == 0 && (k.bits == 2 || k.bits == 4) &&
      (!query_int8 || (k.n <= 256 && k.n * k.bits % 128 == 0))) {
    return vnni::channel_scores(k, len, q, rows, scores, stride, query_int8);
  }
#endif
  // Per token group: q' = q o s and the constant sum_i q_i z_i, then the codes kernels (AVX2 or
  // portable, as the instruction set says).
  const int64_t n = k.n, row_bytes = n * k.bits / 8;
  query_int8 = query_int8 && n % kQ8Block == 0;
  float* qs = scratch<float, 8>(static_cast<size_t>(rows * n + rows + k.group));
  float* base = qs + rows * n;
  float* ones = base + rows;  // unit token scales for q8_scores
  std::fill(ones, ones + k.group, 1.0f);
  int8_t* codes = scratch<int8_t, 9>(static_cast<size_t>(rows * n));
  float* q8 = scratch<float, 10>(static_cast<size_t>(2 * rows * n / kQ8Block));
  for (int64_t t0 = 0; t0 < len;) {
    const int64_t g = (k.lead + t0) / k.group;
    const int64_t t1 = std::min(len, (g + 1) * k.group - k.lead);
    const float* s = k.s + g * n;
    const float* z = k.z + g * n;
    for (int64_t r = 0; r < rows; ++r) {
      float c = 0;
      for (int64_t i = 0; i < n; ++i) {
        qs[r * n + i] = q[r * n + i] * s[i];
        c += q[r * n + i] * z[i];
      }
      base[r] = c;
    }
    const uint8_t* rows_at = k.codes + t0 * row_bytes;
    if (query_int8) {
      float* dsums = q8 + rows * n / kQ8Block;
      quantize_q8(qs, rows, n, codes, q8, dsums);
      q8_scores({rows_at, ones, nullptr, k.bits, 0, n, n}, t1 - t0, {codes, q8, dsums}, rows,
                scores + t0, stride);
    } else {
      codes_scores({rows_at, nullptr, nullptr, k.bits, 0, n, n}, t1 - t0, qs, rows, scores + t0,
                   stride);
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = t0; t < t1; ++t) scores[r * stride + t] += base[r];
    }
    t0 = t1;
  }
}

bool kivi_key_tile_supported(int bits, int64_t group, int64_t n, bool query_int8) {
  return query_int8 && isa() == Isa::kVnni && group % kKeyTile == 0 && n % 32 == 0 && n <= 256 &&
         (bits == 2 || bits == 4);
}

void kivi_key_tile_scores(const KiviKeyTiles& k, int64_t t0, int64_t t1, const float* q,
                          int64_t rows, float* scores, int64_t stride, bool query_int8) {
#if defined(__x86_64__)
  if (kivi_key_tile_supported(k.bits, k.group, k.n, query_int8)) {
    return vnni::kivi_key_tile_scores_int8(k, t0, t1, q, rows, scores, stride);
  }
#endif
  std::abort();  // callers check kivi_key_tile_supported() first (the store un-tiles otherwise)
}

// dword (w, j) of tile k is word w of token 16 k + j (see KiviKeyTiles); memcpy: the buffers
// are bytes
void tile_key_rows(const uint8_t* rows, int64_t words, int64_t t0, int64_t t1, uint8_t* tiles) {
  for (int64_t t = t0; t < t1; ++t) {
    uint8_t* slot = tiles + ((t / kKeyTile) * kKeyTile * words + t % kKeyTile) * 4;
    for (int64_t w = 0; w < words; ++w) {
      std::memcpy(slot + w * kKeyTile * 4, rows + ((t - t0) * words + w) * 4, 4);
    }
  }
}

void untile_key_rows(const uint8_t* tiles, int64_t words, int64_t t0, int64_t t1, uint8_t* rows) {
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* slot = tiles + ((t / kKeyTile) * kKeyTile * words + t % kKeyTile) * 4;
    for (int64_t w = 0; w < words; ++w) {
      std::memcpy(rows + ((t - t0) * words + w) * 4, slot + w * kKeyTile * 4, 4);
    }
  }
}

void rows_scores(RowType type, const void* k, int64_t len, int64_t n, const float* q, int64_t rows,
                 float* scores, int64_t stride) {
#if defined(__x86_64__)
  if (n % 16 == 0) {
    if (isa() == Isa::kVnni) return vnni::rows_scores(type, k, len, n, q, rows, scores, stride);
    if (isa() == Isa::kAvx2) return avx2::rows_scores(type, k, len, n, q, rows, scores, stride);
  }
#endif
  rows_scores_portable(type, k, len, n, q, rows, scores, stride);
}

void rows_weighted_sum(RowType type, const void* v, int64_t len, int64_t n, const float* p,
                       int64_t rows, int64_t stride, float* out) {
#if defined(__x86_64__)
  if (n % 16 == 0) {
    if (isa() == Isa::kVnni) return vnni::rows_weighted_sum(type, v, len, n, p, rows, stride, out);
    if (isa() == Isa::kAvx2) return avx2::rows_weighted_sum(type, v, len, n, p, rows, stride, out);
  }
#endif
  rows_weighted_sum_portable(type, v, len, n, p, rows, stride, out);
}

}  // namespace kvbench::simd
