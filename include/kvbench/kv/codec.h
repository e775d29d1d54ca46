// A storage codec: how a token's keys and values are stored. Codecs make TokenStores (one for
// keys and one for values, since formats like KIVI treat them differently), state their
// nominal size by formula, and state the error bound tests hold them to. Codecs know nothing
// of which tokens are kept: that is the retention policy's job, so any codec combines with
// any policy.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "kvbench/kv/token_store.h"

namespace kvbench {

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // Resolved parameters, for reports.
  virtual nlohmann::json params() const = 0;

  virtual std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const = 0;
  virtual std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads,
                                                       int64_t head_dim) const = 0;

  // Bytes the format's formula gives for `tokens` tokens of K plus V of one layer, all heads.
  virtual StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const = 0;
  // Largest |x - dequantize(quantize(x))| allowed for the values of one token row `x`
  // (fp32, [head_dim]) of keys (is_key) or values, for a store whose values never exceeded
  // `store_amax` in magnitude and whose calibration (if any) saw that maximum.
  // Identity codecs: rounding of the dtype.
  virtual at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const = 0;
  // Relative error of fused decode attention against the reference path that the fused
  // kernels must stay within (both read the same stored codes; only summation order differs).
  virtual double fused_tolerance() const { return 1e-4; }
  // Whether its stores implement TokenStore::retain (drop tokens in place without
  // re-quantizing), which decode-time eviction needs. Eviction once after the prefill works
  // with every codec: the kept tokens are stored from their full-precision values.
  virtual bool can_drop_tokens() const { return false; }
};

}  // namespace kvbench
