#include "kvbench/kv/identity_codec.h"

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

  // Each stored row is converted once into a small fp32 buffer and then used by every query
  // row of the GQA group.
  void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1, float* scores,
           int64_t stride) const override {
    std::vector<float> k(static_cast<size_t>(head_dim_));
    for (int64_t t = t0; t < t1; ++t) {
      simd::to_float(buffer_.row<T>(head, t), k.data(), head_dim_);
      simd::dot_rows(k.data(), q, rows, head_dim_, scores + (t - t0), stride);
    }
  }

  void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                  int64_t stride, float* out) const override {
    std::vector<float> v(static_cast<size_t>(head_dim_));
    for (int64_t t = t0; t < t1; ++t) {
      simd::to_float(buffer_.row<T>(head, t), v.data(), head_dim_);
      simd::axpy_rows(v.data(), p + (t - t0), rows, stride, out, head_dim_);
    }
  }

  StorageBytes bytes() const override { return {buffer_.bytes(), 0}; }

 private:
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
