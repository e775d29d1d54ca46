#include "kvbench/kv/identity_codec.h"

#include <type_traits>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/row_buffer.h"
#include "kvbench/kv/simd.h"
#include "kvbench/model/model_config.h"

namespace kvbench {
namespace {

template <typename T>
class IdentityStore final : public TokenStore {
 public:
  IdentityStore(int64_t kv_heads, int64_t head_dim, at::ScalarType dtype)
      : head_dim_(head_dim), buffer_(kv_heads, head_dim, dtype) {}

  void append(const at::Tensor& x) override { buffer_.append(x.size(1)).copy_(x); }
  int64_t size() const override { return buffer_.size(); }
  void retain(const RowMoves& moves) override { buffer_.retain(moves); }
  at::Tensor dequantize() const override {
    // libtorch 1.13's fp16 -> fp32 CPU cast runs near 0.5 GB/s; convert row by row instead.
    at::Tensor stored = buffer_.rows();
    const int64_t heads = stored.size(0), tokens = stored.size(1);
    at::Tensor out = at::empty({heads, tokens, head_dim_}, at::kFloat);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t t = 0; t < tokens; ++t) {
        simd::to_float(buffer_.row<T>(h, t), out.data_ptr<float>() + (h * tokens + t) * head_dim_,
                       head_dim_);
      }
    }
    return out;
  }

  int64_t head_dim() const override { return head_dim_; }
  // Consecutive tokens of a head are contiguous: one conversion for the whole block.
  void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const override {
    simd::to_float(buffer_.row<T>(head, t0), out, (t1 - t0) * head_dim_);
  }

  // Fused reads convert fp16/bf16 inside the dot products, with no fp32 staging buffer.
  void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1, float* scores,
           int64_t stride) const override {
    simd::rows_scores(kRowType, buffer_.row<T>(head, t0), t1 - t0, head_dim_, q, rows, scores,
                      stride);
  }
  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    simd::rows_weighted_sum(kRowType, buffer_.row<T>(head, t0), t1 - t0, head_dim_, p, rows, stride,
                            out);
  }

  StorageBytes bytes() const override { return {buffer_.bytes(), 0}; }
  uint64_t allocated_bytes() const override { return buffer_.allocated_bytes(); }
  void reserve(int64_t, int64_t tokens) override { buffer_.reserve(tokens); }
  void fit(int64_t tokens) override { buffer_.fit(tokens); }

 private:
  static constexpr simd::RowType kRowType = std::is_same_v<T, at::Half> ? simd::RowType::kFloat16
                                            : std::is_same_v<T, at::BFloat16>
                                                ? simd::RowType::kBFloat16
                                                : simd::RowType::kFloat32;
  int64_t head_dim_;
  RowBuffer buffer_;
};

std::unique_ptr<TokenStore> make_store(at::ScalarType dtype, int64_t kv_heads, int64_t head_dim) {
  switch (dtype) {
    case at::kFloat:
      return std::make_unique<IdentityStore<float>>(kv_heads, head_dim, dtype);
    case at::kHalf:
      return std::make_unique<IdentityStore<at::Half>>(kv_heads, head_dim, dtype);
    case at::kBFloat16:
      return std::make_unique<IdentityStore<at::BFloat16>>(kv_heads, head_dim, dtype);
    default:
      throw Error("identity codec: unsupported dtype");
  }
}

}  // namespace

IdentityCodec::IdentityCodec(at::ScalarType dtype) : dtype_(dtype) {
  KVB_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
            "identity codec: dtype must be float32, float16 or bfloat16");
}

nlohmann::json IdentityCodec::params() const { return {{"dtype", dtype_name(dtype_)}}; }

std::unique_ptr<TokenStore> IdentityCodec::make_key_store(int64_t kv_heads,
                                                          int64_t head_dim) const {
  return make_store(dtype_, kv_heads, head_dim);
}

std::unique_ptr<TokenStore> IdentityCodec::make_value_store(int64_t kv_heads,
                                                            int64_t head_dim) const {
  return make_store(dtype_, kv_heads, head_dim);
}

StorageBytes IdentityCodec::nominal_bytes(int64_t tokens, int64_t kv_heads,
                                          int64_t head_dim) const {
  return {2ull * tokens * kv_heads * head_dim * at::elementSize(dtype_), 0};
}

at::Tensor IdentityCodec::max_error(const at::Tensor& row, bool, double) const {
  // Round-to-nearest into a format with m mantissa bits: |error| <= |x| * 2^-(m+1).
  const double unit = dtype_ == at::kFloat ? 0x1.0p-24 : dtype_ == at::kHalf ? 0x1.0p-11 : 0x1.0p-8;
  // fp16 subnormals are spaced 2^-24 apart, so small values can be off by half of that.
  const double floor = dtype_ == at::kHalf ? 0x1.0p-25 : 1e-38;
  return row.abs() * unit + floor;
}

}  // namespace kvbench
