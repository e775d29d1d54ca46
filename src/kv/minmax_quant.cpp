#include "kvbench/kv/minmax_quant.h"

#include <algorithm>
#include <cmath>

namespace kvbench::minmax {
namespace {

// One group's stored parameters: min and scale rounded to the dtype; a constant group (or one
// whose values are all skipped) has s = 0 and every code 0. A group holding a value that is not
// finite (NaN, or an overflow upstream), or whose min or scale overflows the dtype, stores a
// NaN scale: the whole group reads back NaN, as the full cache would show it, instead of the
// NaN passing as the group's min.
struct Group {
  float s, m, inv;
  int qmax;
  Group(float lo, float hi, bool finite, int bits, at::ScalarType dtype) : qmax((1 << bits) - 1) {
    if (lo > hi) lo = hi = 0.0f;  // every value skipped
    m = round_to(dtype, lo);
    s = round_to(dtype, (hi - m) / qmax);
    if (!finite || !std::isfinite(m) || !std::isfinite(s)) s = m = NAN;
    inv = s != 0 && std::isfinite(s) ? 1.0f / s : 0.0f;
  }
  int code(float x) const {
    const float q = (x - m) * inv;
    return std::isfinite(q) ? std::clamp(static_cast<int>(std::nearbyint(q)), 0, qmax) : 0;
  }
};

}  // namespace

float round_to(at::ScalarType dtype, float x) {
  switch (dtype) {
    case at::kHalf:
      return static_cast<float>(at::Half(x));
    case at::kBFloat16:
      return static_cast<float>(at::BFloat16(x));
    default:
      return x;
  }
}

void quantize_per_channel(const float* x, int64_t n, int64_t head_dim, int64_t group, int bits,
                          at::ScalarType dtype, const uint8_t* skip, uint8_t* codes,
                          int64_t code_stride, float* scales, float* mins) {
  const int64_t d = head_dim;
  for (int64_t g = 0; g * group < n; ++g) {
    const int64_t t0 = g * group, t1 = std::min(n, t0 + group);
    for (int64_t c = 0; c < d; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      bool finite = true;
      for (int64_t t = t0; t < t1; ++t) {
        if (skip && skip[t * d + c]) continue;
        finite = finite && std::isfinite(x[t * d + c]);
        lo = std::min(lo, x[t * d + c]);
        hi = std::max(hi, x[t * d + c]);
      }
      const Group q(lo, hi, finite, bits, dtype);
      scales[g * d + c] = q.s;
      mins[g * d + c] = q.m;
      for (int64_t t = t0; t < t1; ++t)
        put_code(codes + t * code_stride, c, bits, q.code(x[t * d + c]));
    }
  }
}

void quantize_per_token(const float* x, int64_t n, int64_t head_dim, int64_t group, int bits,
                        at::ScalarType dtype, const uint8_t* skip, uint8_t* codes,
                        int64_t code_stride, float* scales, float* mins) {
  const int64_t groups = head_dim / group;
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * head_dim;
    const uint8_t* st = skip ? skip + t * head_dim : nullptr;
    for (int64_t g = 0; g < groups; ++g) {
      float lo = INFINITY, hi = -INFINITY;
      bool finite = true;
      for (int64_t i = g * group; i < (g + 1) * group; ++i) {
        if (st && st[i]) continue;
        finite = finite && std::isfinite(xt[i]);
        lo = std::min(lo, xt[i]);
        hi = std::max(hi, xt[i]);
      }
      const Group q(lo, hi, finite, bits, dtype);
      scales[t * groups + g] = q.s;
      mins[t * groups + g] = q.m;
      for (int64_t i = g * group; i < (g + 1) * group; ++i) {
        put_code(codes + t * code_stride, i, bits, q.code(xt[i]));
      }
    }
  }
}

}  // namespace kvbench::minmax
