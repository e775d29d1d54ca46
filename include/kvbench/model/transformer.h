// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) in libtorch: RMSNorm, GQA
// attention with RoPE (Hugging Face rotate_half layout), optional q/k/v biases and Qwen3
// q/k-norm, SwiGLU MLP. Compute is fp32 on CPU (libtorch 1.13 has no fp16 CPU matmul); the
// KV cache decides its own storage.
//
// A forward step takes a packed batch: each sequence contributes its new tokens (a prompt at
// prefill, one token at decode), the linear layers run once over all of them, and attention
// runs per sequence through the KV cache. Sequences of different lengths need no padding.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kvbench/kv/kv_cache.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/rope.h"

namespace kvbench {

struct LayerWeights {
  at::Tensor input_norm;                     // [hidden]
  at::Tensor q_proj, k_proj, v_proj;         // [heads*hd, hidden], [kv_heads*hd, hidden] x2
  at::Tensor q_bias, k_bias, v_bias;         // [heads*hd], [kv_heads*hd]; undefined without bias
  at::Tensor o_proj, o_bias;                 // [hidden, heads*hd], [hidden]
  at::Tensor q_norm, k_norm;                 // [head_dim]; Qwen3 only
  at::Tensor post_norm;                      // [hidden]
  at::Tensor gate_proj, up_proj;             // [intermediate, hidden]
  at::Tensor down_proj;                      // [hidden, intermediate]
  at::Tensor gate_bias, up_bias, down_bias;  // Llama mlp_bias only
};

struct ModelWeights {
  at::Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [hidden]
  at::Tensor lm_head;  // [vocab, hidden]; the embedding itself when tied
};

// One sequence's part of a forward step.
struct SequenceStep {
  int64_t seq = 0;              // id in the KV cache
  std::vector<int64_t> tokens;  // new token ids (>= 1)
};

class Transformer {
 public:
  Transformer(ModelConfig config, ModelWeights weights);

  // Loads a Hugging Face checkpoint directory (config.json, safetensors, generation_config.json),
  // checking every tensor's shape against the config.
  static Transformer load(const std::string& dir);
  // Random weights for `config` (for presets built in memory and tests): linear weights
  // N(0, 0.02), norm weights 1 + N(0, 0.1), biases N(0, 0.02); seeded.
  static Transformer random(const ModelConfig& config, uint64_t seed);

  // Runs one step. Returns logits [num_sequences, vocab] for each sequence's last new token,
  // or [total_new_tokens, vocab] (sequences in order) when `all_logits`.
  at::Tensor forward(const std::vector<SequenceStep>& batch, KVCache& cache,
                     bool all_logits = false) const;

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // Bytes of weights held in memory.
  uint64_t weight_bytes() const;
  // Hugging Face tensor names and shapes this config expects, in checkpoint order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
      const ModelConfig& config);

 private:
  at::Tensor attention(const LayerWeights& w, int64_t layer, const at::Tensor& h,
                       const at::Tensor& cos, const at::Tensor& sin,
                       const std::vector<SequenceStep>& batch, KVCache& cache) const;

  ModelConfig config_;
  ModelWeights weights_;
  at::Tensor inv_freq_;  // [head_dim / 2] float64
};

// Each Hugging Face tensor name this config expects, bound to its slot in `weights` (layers
// resized to the config), in checkpoint order. A tied lm_head is not listed.
std::vector<std::pair<std::string, at::Tensor*>> bind_weights(const ModelConfig& config,
                                                              ModelWeights& weights);

// x * rsqrt(mean(x^2) + eps) * weight over the last dimension (Hugging Face LlamaRMSNorm).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace kvbench
