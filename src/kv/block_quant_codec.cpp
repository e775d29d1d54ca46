#include "kvbench/kv/block_quant_codec.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"

namespace kvbench {
namespace {

float to_fp16(float x) { return static_cast<float>(at::Half(x)); }

// Format of one token row: `head_dim` codes of `bits` bits packed little-end first, plus one
// fp16 scale (and min) per group. Dequantized value: (code - zero) * scale + min.
struct Format {
  int bits;
  bool symmetric;
  int64_t group, head_dim;
  int zero() const { return symmetric ? (bits == 8 ? 128 : 8) : 0; }
  bool query_int8;  // score keys with integer dot products against an int8 query
  bool value_int8;  // accumulate values against int8 weights p d (per 32-token tile)
  int64_t code_bytes() const { return head_dim * bits / 8; }
  int64_t groups() const { return head_dim / group; }
};

// Per-thread fp32 copies of a block of rows' scales and mins for the kernels.
float* scale_scratch(size_t floats) {
  thread_local std::vector<float> buffer;
  if (buffer.size() < floats) buffer.resize(floats);
  return buffer.data();
}

void set_code(uint8_t* codes, int64_t j, int bits, int code) {
  switch (bits) {
    case 8:
      codes[j] = static_cast<uint8_t>(code);
      return;
    case 4:
      codes[j >> 1] |= static_cast<uint8_t>(code << ((j & 1) * 4));
      return;
    default:
      codes[j >> 2] |= static_cast<uint8_t>(code << ((j & 3) * 2));
      return;
  }
}

// Quantizes one group of `n` values into codes (already zeroed) and its scale/min. A group
// holding a value that is not finite, or whose scale or min overflows fp16 (|x| past 65504 on a
// bf16 or fp32 model), stores NaN scale and min: it reads back NaN, as the full cache would show
// the NaN, not a finite value.
void quantize_group(const Format& f, const float* x, int64_t n, uint8_t* codes, int64_t j0,
                    at::Half* scale, at::Half* min) {
  float lo = x[0], hi = x[0], extreme = x[0];
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(x[i]);
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    if (std::fabs(x[i]) > std::fabs(extreme)) extreme = x[i];
  }
  const int qmax = (1 << f.bits) - 1;
  float d = 0, m = 0;
  if (f.symmetric) {
    d = to_fp16(f.bits == 8 ? std::fabs(extreme) / 127.0f : extreme / -8.0f);
  } else {
    m = to_fp16(lo);
    d = to_fp16((hi - m) / static_cast<float>(qmax));
  }
  if (!finite || !std::isfinite(d) || !std::isfinite(m)) {
    *scale = at::Half(NAN);
    *min = at::Half(NAN);
    return;  // codes stay zero
  }
  const float inv = d != 0 ? 1.0f / d : 0.0f;  // a constant group has d = 0: all codes zero
  for (int64_t i = 0; i < n; ++i) {
    int q;
    if (!f.symmetric) {
      q = static_cast<int>(std::nearbyint((x[i] - m) * inv));
    } else if (f.bits == 8) {
      q = static_cast<int>(std::nearbyint(x[i] * inv)) + 128;
    } else {
      q = static_cast<int>(x[i] * inv + 8.5f);  // q4_0 truncates after the +8.5 offset
    }
    set_code(codes, j0 + i, f.bits, std::clamp(q, f.symmetric && f.bits == 8 ? 1 : 0, qmax));
  }
  *scale = at::Half(d);
  *min = at::Half(m);
}

class BlockQuantStore final : public TokenStore {
 public:
  BlockQuantStore(const Format& f, int64_t kv_heads)
      : f_(f),
        kv_heads_(kv_heads),
        codes_(kv_heads, f.code_bytes(), at::kByte),
        scales_(kv_heads, f.groups(), at::kHalf),
        mins_(kv_heads, f.symmetric ? 0 : f.groups(), at::kHalf) {}

  void append(const at::Tensor& x_in) override {
    at::Tensor x = x_in.to(at::kFloat).contiguous();  // [kv_heads, n, head_dim]
    const int64_t n = x.size(1), start = size();
    codes_.append(n).zero_();
    scales_.append(n);
    mins_.append(n);
    std::vector<at::Half> unused(static_cast<size_t>(f_.groups()));
    for (int64_t h = 0; h < kv_heads_; ++h) {
      for (int64_t t = 0; t < n; ++t) {
        const float* row = x.data_ptr<float>() + (h * n + t) * f_.head_dim;
        uint8_t* c = codes_.mutable_row<uint8_t>(h, start + t);
        at::Half* s = scales_.mutable_row<at::Half>(h, start + t);
        at::Half* m = f_.symmetric ? unused.data() : mins_.mutable_row<at::Half>(h, start + t);
        for (int64_t g = 0; g < f_.groups(); ++g) {
          quantize_group(f_, row + g * f_.group, f_.group, c, g * f_.group, s + g, m + g);
        }
      }
    }
  }

  int64_t size() const override { return codes_.size(); }
  void retain(const RowMoves& moves) override {
    codes_.retain(moves);
    scales_.retain(moves);
    mins_.retain(moves);
  }

  at::Tensor dequantize() const override {
    at::Tensor out = at::empty({kv_heads_, size(), f_.head_dim}, at::kFloat);
    std::vector<float> row(static_cast<size_t>(f_.head_dim));
    for (int64_t h = 0; h < kv_heads_; ++h) {
      for (int64_t t = 0; t < size(); ++t) {
        decode_row(h, t, out.data_ptr<float>() + (h * size() + t) * f_.head_dim);
      }
    }
    return out;
  }

  int64_t head_dim() const override { return f_.head_dim; }
  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    for (int64_t t = t0; t < t1; ++t) decode_row(head, t, out + (t - t0) * f_.head_dim);
  }

  // Values straight from the codes: the dequantized values exist in registers only.
  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    if (f_.value_int8) {
      simd::codes_weighted_sum_int8(code_rows(head, t0, t1), t1 - t0, p, rows, stride, out);
    } else {
      simd::codes_weighted_sum(code_rows(head, t0, t1), t1 - t0, p, rows, stride, out);
    }
  }

  // The integer key kernel needs whole int8 query blocks inside each scale group.
  bool quantized_query() const override {
    return f_.query_int8 && f_.group % simd::kQ8Block == 0 && f_.head_dim % simd::kQ8Block == 0;
  }
  void dot_quantized(int64_t head, const simd::Q8Rows& q, int64_t rows, int64_t t0, int64_t t1,
                     float* scores, int64_t stride) const override {
    simd::q8_scores(code_rows(head, t0, t1), t1 - t0, q, rows, scores, stride);
  }

  StorageBytes bytes() const override { return {codes_.bytes(), scales_.bytes() + mins_.bytes()}; }
  uint64_t allocated_bytes() const override {
    return codes_.allocated_bytes() + scales_.allocated_bytes() + mins_.allocated_bytes();
  }
  void reserve(int64_t, int64_t tokens) override {
    for (RowBuffer* b : {&codes_, &scales_, &mins_}) b->reserve(tokens);
  }
  void fit(int64_t tokens) override {
    for (RowBuffer* b : {&codes_, &scales_, &mins_}) b->fit(tokens);
  }

 private:
  // Rows [t0, t1) of `head` for the kernels, with their scales and mins converted to fp32 in a
  // per-thread buffer (valid until this thread's next call).
  simd::CodeRows code_rows(int64_t head, int64_t t0, int64_t t1) const {
    const int64_t n = (t1 - t0) * f_.groups();
    float* d = scale_scratch(static_cast<size_t>(2 * n));
    float* m = f_.symmetric ? nullptr : d + n;
    simd::to_float(scales_.row<at::Half>(head, t0), d, n);
    if (m) simd::to_float(mins_.row<at::Half>(head, t0), m, n);
    // The next chunk's scales and mins (the fused attention walks a head's chunks in order),
    // so that conversion does not wait on memory.
    if (t1 + (t1 - t0) <= size()) {
      const char* ns = reinterpret_cast<const char*>(scales_.row<at::Half>(head, t1));
      const char* nm = m ? reinterpret_cast<const char*>(mins_.row<at::Half>(head, t1)) : nullptr;
      for (int64_t b = 0; b < n * 2; b += 64) {
        __builtin_prefetch(ns + b);
        if (nm) __builtin_prefetch(nm + b);
      }
    }
    return {codes_.row<uint8_t>(head, t0), d, m, f_.bits, f_.zero(), f_.group, f_.head_dim};
  }

  // Reconstructs one stored row into `out` [head_dim]: reads codes, scales and mins only.
  void decode_row(int64_t h, int64_t t, float* out) const {
    simd::dequant_row(codes_.row<uint8_t>(h, t), scales_.row<at::Half>(h, t),
                      f_.symmetric ? nullptr : mins_.row<at::Half>(h, t), f_.bits, f_.zero(),
                      f_.group, f_.head_dim, out);
  }

  Format f_;
  int64_t kv_heads_;
  RowBuffer codes_, scales_, mins_;
};

}  // namespace

BlockQuantCodec::BlockQuantCodec(int bits, bool symmetric, int64_t group, bool query_int8,
                                 bool value_int8)
    : bits_(bits),
      symmetric_(symmetric),
      group_(group),
      query_int8_(query_int8),
      value_int8_(value_int8) {
  KVB_CHECK(bits == 2 || bits == 4 || bits == 8, "block quantization: bits must be 2, 4 or 8");
  KVB_CHECK(!(symmetric && bits == 2), "block quantization: 2-bit codes are asymmetric only");
  KVB_CHECK(group >= 4 && group % 4 == 0, "block quantization: group must be a multiple of 4");
}

std::string BlockQuantCodec::name() const {
  if (symmetric_) return bits_ == 8 ? "q8_0" : "q4_0";
  return "q" + std::to_string(bits_) + "_1";
}

nlohmann::json BlockQuantCodec::params() const {
  return {{"bits", bits_},
          {"symmetric", symmetric_},
          {"group", group_},
          {"scale_dtype", "float16"},
          {"query_int8", query_int8_},
          {"value_int8", value_int8_}};
}

std::unique_ptr<TokenStore> BlockQuantCodec::make_key_store(int64_t kv_heads,
                                                            int64_t head_dim) const {
  KVB_CHECK(head_dim % group_ == 0, "block quantization: group ", group_,
            " does not divide head_dim ", head_dim);
  return std::make_unique<BlockQuantStore>(
      Format{bits_, symmetric_, group_, head_dim, query_int8_, value_int8_}, kv_heads);
}

std::unique_ptr<TokenStore> BlockQuantCodec::make_value_store(int64_t kv_heads,
                                                              int64_t head_dim) const {
  return make_key_store(kv_heads, head_dim);
}

StorageBytes BlockQuantCodec::nominal_bytes(int64_t tokens, int64_t kv_heads,
                                            int64_t head_dim) const {
  const uint64_t rows = 2ull * tokens * kv_heads;  // K and V
  const uint64_t groups = static_cast<uint64_t>(head_dim / group_);
  return {rows * head_dim * bits_ / 8, rows * groups * 2 * (symmetric_ ? 1 : 2)};
}

at::Tensor BlockQuantCodec::max_error(const at::Tensor& row, bool, double) const {
  // Per group: half a step (a full step for q4_0, whose opposite-sign extreme can clamp), plus
  // the fp16 rounding of the stored min and of the scale times the largest code: relative
  // (2^-11 of each) for normal fp16 values, absolute below 2^-14, where a scale is subnormal
  // and rounds to within 2^-25 (a tiny group's scale can round to 0: every value reads back
  // its min, or 0, within (largest code + 1) x 2^-25). The symmetric formats have no min, and
  // their largest code times the scale is amax: amax x 2^-11 (with slack for float arithmetic);
  // the min-max ones |min| + (max - min) <= 3 amax of it, bounded by amax x 2^-9.
  at::Tensor groups = row.to(at::kFloat).view({-1, group_});
  at::Tensor lo = std::get<0>(groups.min(1)), hi = std::get<0>(groups.max(1));
  at::Tensor amax = at::maximum(lo.abs(), hi.abs());
  at::Tensor step = symmetric_ ? amax / (bits_ == 8 ? 127.0 : 8.0) : (hi - lo) / ((1 << bits_) - 1);
  const double steps = symmetric_ && bits_ == 4 ? 1.0 : 0.5;
  const double largest_code = symmetric_ ? (bits_ == 8 ? 128.0 : 8.0) : (1 << bits_) - 1;
  const double rounding = symmetric_ ? 0x1.0p-11 * 1.01 : 0x1.0p-9;
  at::Tensor bound = step * steps + amax * rounding + (largest_code + 1) * 0x1.0p-25 + 1e-7;
  return bound.unsqueeze(1).expand({groups.size(0), group_}).reshape(row.sizes());
}

}  // namespace kvbench
