// Test helpers for codecs that need preparation (the low-rank codecs): synthetic preparation
// data of any shape, so registry-wide tests can run every codec without a model.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <memory>

#include "kvbench/kv/codec.h"

namespace kvbench::testing_support {

// Random W_k / W_v ([kv_heads * dim, hidden], hidden = 3 * kv_heads * dim), RoPE frequencies
// with theta 10000, and `tokens` random calibration keys and values per layer; seeded.
inline PreparationInput synthetic_preparation(int64_t layers, int64_t kv_heads, int64_t dim,
                                              uint64_t seed, int64_t tokens = 300) {
  auto gen = at::detail::createCPUGenerator(seed);
  PreparationInput in;
  in.num_layers = layers;
  in.kv_heads = kv_heads;
  in.head_dim = dim;
  in.rope_inv_freq =
      at::pow(10000.0, at::arange(0, dim, 2, at::kDouble).div_(static_cast<double>(dim)))
          .reciprocal();
  for (int64_t l = 0; l < layers; ++l) {
    in.k_proj.push_back(at::randn({kv_heads * dim, 3 * kv_heads * dim}, gen, at::kFloat));
    in.v_proj.push_back(at::randn({kv_heads * dim, 3 * kv_heads * dim}, gen, at::kFloat));
    at::Tensor k = at::randn({kv_heads, tokens, dim}, gen, at::kFloat);
    k += at::randn({kv_heads, 1, dim}, gen, at::kFloat) * 2;
    in.keys.push_back(k);
    in.values.push_back(at::randn({kv_heads, tokens, dim}, gen, at::kFloat));
  }
  return in;
}

// `codec` itself when it needs no preparation, else prepared on synthetic data of this shape.
inline std::shared_ptr<const Codec> ready(std::shared_ptr<const Codec> codec, int64_t layers,
                                          int64_t kv_heads, int64_t dim, uint64_t seed = 11) {
  if (!codec->needs_preparation()) return codec;
  return codec->prepare(synthetic_preparation(layers, kv_heads, dim, seed));
}

}  // namespace kvbench::testing_support
