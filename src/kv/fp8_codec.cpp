#include "kvbench/kv/fp8_codec.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"

namespace kvbench {
namespace {

constexpr float kMax = 448.0f;

const std::array<float, 256>& decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) {
      const int sign = c >> 7, exp = (c >> 3) & 0xF, man = c & 0x7;
      float v;
      if (exp == 0xF && man == 0x7) {
        v = NAN;  // e4m3fn has NaN but no infinity
      } else if (exp == 0) {
        v = std::ldexp(static_cast<float>(man) / 8.0f, -6);  // subnormal
      } else {
        v = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
      }
      t[c] = sign ? -v : v;
    }
    return t;
  }();
  return table;
}

// Per-head (or per-layer) scales, fixed or calibrated on the first append.
class Fp8Store final : public TokenStore {
 public:
  Fp8Store(int64_t kv_heads, int64_t head_dim, bool amax, double scale_value, double divisor,
           bool per_head)
      : kv_heads_(kv_heads),
        head_dim_(head_dim),
        amax_(amax),
        divisor_(divisor),
        per_head_(per_head),
        codes_(kv_heads, head_dim, at::kByte),
        scales_(at::full({per_head ? kv_heads : 1}, scale_value, at::kFloat)) {}

  void append(const at::Tensor& x_in) override {
    at::Tensor x = x_in.to(at::kFloat).contiguous();  // [kv_heads, n, head_dim]
    if (amax_ && !calibrated_) calibrate(x);
    const int64_t n = x.size(1), start = size();
    codes_.append(n);
    const float* s = scales_.data_ptr<float>();
    for (int64_t h = 0; h < kv_heads_; ++h) {
      const float inv = 1.0f / s[per_head_ ? h : 0];
      for (int64_t t = 0; t < n; ++t) {
        const float* row = x.data_ptr<float>() + (h * n + t) * head_dim_;
        uint8_t* c = codes_.mutable_row<uint8_t>(h, start + t);
        for (int64_t d = 0; d < head_dim_; ++d) c[d] = float_to_e4m3(row[d] * inv);
      }
    }
  }

  int64_t size() const override { return codes_.size(); }
  // The scales stay: they are per head (or layer), calibrated once, not per token.
  void retain(const RowMoves& moves) override { codes_.retain(moves); }

  at::Tensor dequantize() const override {
    at::Tensor out = at::empty({kv_heads_, size(), head_dim_}, at::kFloat);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      for (int64_t t = 0; t < size(); ++t) {
        decode_row(h, t, out.data_ptr<float>() + (h * size() + t) * head_dim_);
      }
    }
    return out;
  }

  int64_t head_dim() const override { return head_dim_; }
  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    for (int64_t t = t0; t < t1; ++t) decode_row(head, t, out + (t - t0) * head_dim_);
  }

  StorageBytes bytes() const override { return {codes_.bytes(), scales_.nbytes()}; }
  uint64_t allocated_bytes() const override { return codes_.allocated_bytes() + scales_.nbytes(); }
  void reserve(int64_t, int64_t tokens) override { codes_.reserve(tokens); }
  void fit(int64_t tokens) override { codes_.fit(tokens); }

 private:
  void calibrate(const at::Tensor& x) {
    at::Tensor amax = x.abs().amax(per_head_ ? at::IntArrayRef{1, 2} : at::IntArrayRef{0, 1, 2});
    // A head of zeros keeps scale 1 rather than dividing by zero; a NaN amax (a NaN among the
    // first tokens) gives a NaN scale, so the head reads back NaN rather than scale 1.
    scales_ = at::where(amax == 0, at::ones_like(amax), amax / divisor_).reshape({-1}).contiguous();
    calibrated_ = true;
  }

  void decode_row(int64_t h, int64_t t, float* out) const {
    const uint8_t* c = codes_.row<uint8_t>(h, t);
    const float s = scales_.data_ptr<float>()[per_head_ ? h : 0];
    const auto& table = decode_table();
    for (int64_t d = 0; d < head_dim_; ++d) out[d] = table[c[d]] * s;
  }

  int64_t kv_heads_, head_dim_;
  bool amax_;
  double divisor_;
  bool per_head_;
  bool calibrated_ = false;
  RowBuffer codes_;
  at::Tensor scales_;  // [kv_heads] or [1], fp32
};

}  // namespace

uint8_t float_to_e4m3(float x) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const float a = std::min(std::fabs(x), kMax);
  // The 127 non-negative finite codes are increasing in value: binary search, then round to
  // the nearer neighbour, ties to the even code (even mantissa).
  const auto& t = decode_table();
  int lo = 0, hi = 0x7E;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t[mid] <= a)
      lo = mid;
    else
      hi = mid - 1;
  }
  int code = lo;
  if (lo < 0x7E) {
    const float below = a - t[lo], above = t[lo + 1] - a;
    if (above < below || (above == below && (lo & 1))) code = lo + 1;
  }
  return static_cast<uint8_t>(sign | code);
}

float e4m3_to_float(uint8_t code) { return decode_table()[code]; }

Fp8Codec::Fp8Codec(std::string scale, double scale_value, double key_amax_divisor,
                   double value_amax_divisor, std::string granularity)
    : scale_(std::move(scale)),
      scale_value_(scale_value),
      key_amax_divisor_(key_amax_divisor),
      value_amax_divisor_(value_amax_divisor),
      granularity_(std::move(granularity)) {
  KVB_CHECK(scale_ == "amax" || scale_ == "fixed", "fp8: scale must be amax or fixed");
  KVB_CHECK(granularity_ == "head" || granularity_ == "layer",
            "fp8: granularity must be head or layer");
  KVB_CHECK(scale_value_ > 0 && key_amax_divisor_ > 0 && value_amax_divisor_ > 0,
            "fp8: scales must be positive");
}

nlohmann::json Fp8Codec::params() const {
  return {{"scale", scale_},
          {"scale_value", scale_value_},
          {"key_amax_divisor", key_amax_divisor_},
          {"value_amax_divisor", value_amax_divisor_},
          {"granularity", granularity_}};
}

std::unique_ptr<TokenStore> Fp8Codec::make_key_store(int64_t kv_heads, int64_t head_dim) const {
  return std::make_unique<Fp8Store>(kv_heads, head_dim, scale_ == "amax", scale_value_,
                                    key_amax_divisor_, granularity_ == "head");
}

std::unique_ptr<TokenStore> Fp8Codec::make_value_store(int64_t kv_heads, int64_t head_dim) const {
  return std::make_unique<Fp8Store>(kv_heads, head_dim, scale_ == "amax", scale_value_,
                                    value_amax_divisor_, granularity_ == "head");
}

StorageBytes Fp8Codec::nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const {
  const uint64_t scales = granularity_ == "head" ? kv_heads : 1;
  return {2ull * tokens * kv_heads * head_dim, 2 * scales * sizeof(float)};
}

at::Tensor Fp8Codec::max_error(const at::Tensor& row, bool is_key, double store_amax) const {
  // 3 mantissa bits: |error| <= |x| 2^-4 for normal values; below 2^-6 s the spacing is
  // 2^-9 s, so half of it bounds subnormals. s = amax / divisor (calibrated) or fixed; values
  // beyond 448 s saturate, which the caller's store_amax excludes for calibrated scales.
  const double divisor = is_key ? key_amax_divisor_ : value_amax_divisor_;
  const double s = scale_ == "amax" ? store_amax / divisor : scale_value_;
  at::Tensor saturation = (row.abs() - kMax * s).clamp_min(0);
  return row.abs() * 0x1.0p-4 + s * 0x1.0p-10 + saturation + 1e-12;
}

}  // namespace kvbench
