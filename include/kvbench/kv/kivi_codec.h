// KIVI (Liu et al. 2024): asymmetric min-max quantization with keys per channel and values per
// token, and a full-precision window of recent tokens.
//   keys:   tokens are quantized in blocks of R (the residual length): once R tokens have
//           gathered in the full-precision buffer they are quantized, each channel in groups
//           of G consecutive tokens; so T - (T mod R) keys are quantized, the rest stay exact.
//   values: all but the last R tokens are quantized, each token in groups of G channels
//           (a sliding full-precision window).
// s = (max - min) / (2^b - 1), q = clamp(round((x - min) / s)), x^ = q s + min; scales, mins
// and the window are kept in the model dtype. R >= T stores everything exactly.
#pragma once

#include "kvbench/kv/codec.h"

namespace kvbench {

class KiviCodec final : public Codec {
 public:
  KiviCodec(int bits, int64_t group, int64_t residual, at::ScalarType model_dtype);
  std::string name() const override { return "kivi"; }
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;

 private:
  int bits_;
  int64_t group_, residual_;
  at::ScalarType dtype_;
};

}  // namespace kvbench
