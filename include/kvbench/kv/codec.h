// A storage codec: how a token's keys and values are stored. Codecs make TokenStores (one for
// keys and one for values, since formats like KIVI treat them differently), state their
// nominal size by formula, and state the error bound tests hold them to. Codecs know nothing
// of which tokens are kept: that is the retention policy's job, so any codec combines with
// any policy.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/kv/token_store.h"

namespace kvbench {

// What calibration a codec asks of its preparation: `prompts` prompts of `tokens` tokens run
// through the model with a full-precision cache (prompts 0: none). `source` "text": seeded
// sentences of the project's word lists, tokenized by the run's tokenizer; "random": uniform
// token ids.
struct CalibrationSpec {
  int64_t prompts = 0;
  int64_t tokens = 0;
  uint64_t seed = 0;
  std::string source = "text";
};

// What a codec that needs preparation is fitted on, gathered before any timed work
// (suites/preparation.h fills it from the model).
struct PreparationInput {
  int64_t num_layers = 0, kv_heads = 0, head_dim = 0;
  at::Tensor rope_inv_freq;                // [head_dim / 2] float64, the model's RoPE frequencies
  std::vector<at::Tensor> k_proj, v_proj;  // per layer: [kv_heads * head_dim, hidden] fp32
  // Per layer, the calibration prompts' keys (RoPE applied) and values, as the cache receives
  // them: [kv_heads, tokens, head_dim] fp32. Empty when calibration().prompts == 0.
  std::vector<at::Tensor> keys, values;
};

class Codec {
 public:
  virtual ~Codec() = default;
  virtual std::string name() const = 0;
  // Resolved parameters, for reports.
  virtual nlohmann::json params() const = 0;

  virtual std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const = 0;
  virtual std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads,
                                                       int64_t head_dim) const = 0;
  // The stores of layer `layer`, which is what the cache asks for. Codecs fitted per layer
  // (the low-rank bases) override these; every other codec stores each layer alike.
  virtual std::unique_ptr<TokenStore> make_layer_key_store(int64_t layer, int64_t kv_heads,
                                                           int64_t head_dim) const {
    (void)layer;
    return make_key_store(kv_heads, head_dim);
  }
  virtual std::unique_ptr<TokenStore> make_layer_value_store(int64_t layer, int64_t kv_heads,
                                                             int64_t head_dim) const {
    (void)layer;
    return make_value_store(kv_heads, head_dim);
  }

  // Preparation: codecs fitted to the model (low-rank bases from calibration prompts, SVD
  // factors of W_k/W_v) are made unprepared by the registry; needs_preparation() is then true,
  // they refuse to make stores, and prepare() returns the fitted codec. It runs once, before
  // any timed work, and is reported separately (preparation_json).
  virtual bool needs_preparation() const { return false; }
  // Calibration prompts prepare() needs (prompts 0: the model's weights suffice).
  virtual CalibrationSpec calibration() const { return {}; }
  virtual std::shared_ptr<const Codec> prepare(const PreparationInput& input) const;
  // State shared by every sequence (the bases, the factors), counted once per cache: measured
  // from the tensors, and by the method's formula.
  virtual StorageBytes shared_bytes() const { return {}; }
  virtual StorageBytes shared_nominal() const { return {}; }

  // Bytes the format's formula gives for `tokens` tokens of K plus V of one layer, all heads.
  virtual StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const = 0;
  // The same for a sequence whose first append brought `first` tokens and every later one a
  // single token, up to `tokens` (a prefill, then decode steps), for formats whose bytes depend
  // on how tokens arrived (GEAR: a block per compression). Default: nominal_bytes(tokens).
  virtual StorageBytes sequence_nominal_bytes(int64_t first, int64_t tokens, int64_t kv_heads,
                                              int64_t head_dim) const {
    (void)first;
    return nominal_bytes(tokens, kv_heads, head_dim);
  }
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
  // Whether a prompt's prefill attends the keys and values as stored. False (quantizers): the
  // prefill attends them as computed and only the cache is compressed, as KIVI's and GEAR's
  // reference code and Hugging Face's quantized caches do; decode steps read the cache (identity
  // storage in the model's dtype gives the same numbers either way; `fp16` on an fp32 model is
  // a lossy codec like the others). True for low-rank codecs: the method's keys and values are
  // the reconstruction itself (Palu factors the projections).
  virtual bool prefill_reads_stored() const { return false; }
};

}  // namespace kvbench
