// FP8 e4m3 storage (OCP e4m3fn: 4 exponent bits with bias 7, 3 mantissa bits, largest finite
// value 448, no infinities): each value stored as one byte fp8(x / s), read back as fp8 * s.
// Values beyond +-448 s saturate. The scale s is fixed (`scale`: "fixed", value `scale_value`)
// or taken from the first tokens a store sees (`scale`: "amax": amax / `key_amax_divisor` for
// keys, / `value_amax_divisor` for values: 200 and 100 by default, vLLM's, so later tokens up
// to 2.24x / 4.48x the calibration's amax fit), per KV head or per layer (`granularity`).
// Later tokens beyond 448 s saturate.
#pragma once

#include <cstdint>
#include <string>

#include "kvbench/kv/codec.h"

namespace kvbench {

// e4m3fn conversion, round to nearest even, saturating to +-448; NaN maps to NaN.
uint8_t float_to_e4m3(float x);
float e4m3_to_float(uint8_t code);

class Fp8Codec final : public Codec {
 public:
  // s = amax / divisor of the first tokens a layer sees, keys and values apart (vLLM: 200 and
  // 100, headroom for later tokens larger than the prompt's), or `scale_value` when fixed.
  Fp8Codec(std::string scale, double scale_value, double key_amax_divisor,
           double value_amax_divisor, std::string granularity);
  std::string name() const override { return "fp8_e4m3"; }
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;
  bool can_drop_tokens() const override { return true; }

 private:
  std::string scale_;
  double scale_value_, key_amax_divisor_, value_amax_divisor_;
  std::string granularity_;
};

}  // namespace kvbench
