// Blockwise per-token integer quantization (llama.cpp style): each token's head_dim values are
// cut into groups of `group` channels, each group stored as `bits`-bit codes plus an fp16
// scale (and an fp16 min when asymmetric). Keys and values are treated alike.
//   symmetric 8-bit  (q8_0): d = amax / 127, q = round(x / d), x^ = q d
//   symmetric 4-bit  (q4_0): d = m / -8 for the signed extreme m, q = min(15, trunc(x/d + 8.5)),
//                            x^ = (q - 8) d
//   asymmetric b-bit (q4_1, int2): d = (max - min) / (2^b - 1), q = round((x - min) / d),
//                            x^ = q d + min
// Codes are computed against the stored (fp16-rounded) scale and min, so the reconstruction
// error bound refers to what is actually stored.
// query_int8: the fused attention scores keys with integer dot products against the query
// quantized to int8 blocks of 32 once per step (llama.cpp's q8 x q4), when group is a multiple
// of 32; otherwise (and when false) it reads keys through the exact fp32 path. Values are
// always accumulated straight from the codes; value_int8: with int8 weights p d per 32-token
// tile (simd::codes_weighted_sum_int8, bound in docs/methods.md) where the CPU has AVX-512
// VNNI, group is a multiple of 32 and head_dim of 64; otherwise (and when false) exactly.
#pragma once

#include "kvbench/kv/codec.h"

namespace kvbench {

class BlockQuantCodec final : public Codec {
 public:
  BlockQuantCodec(int bits, bool symmetric, int64_t group, bool query_int8 = true,
                  bool value_int8 = false);
  std::string name() const override;
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;
  bool can_drop_tokens() const override { return true; }
  bool query_int8() const { return query_int8_; }
  bool value_int8() const { return value_int8_; }

 private:
  int bits_;
  bool symmetric_;
  int64_t group_;
  bool query_int8_, value_int8_;
};

}  // namespace kvbench
