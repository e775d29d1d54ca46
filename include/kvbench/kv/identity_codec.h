// Identity storage: tokens kept as they are, in float32, float16 or bfloat16. The uncompressed
// baseline (`full`, `fp16`, `bf16`, `fp32`).
#pragma once

#include "kvbench/kv/codec.h"

namespace kvbench {

class IdentityCodec final : public Codec {
 public:
  explicit IdentityCodec(at::ScalarType dtype);
  std::string name() const override { return "identity"; }
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;
  bool can_drop_tokens() const override { return true; }

 private:
  at::ScalarType dtype_;
};

}  // namespace kvbench
