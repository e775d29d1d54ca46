// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) in libtorch: RMSNorm, GQA
// attention with RoPE (Hugging Face rotate_half layout), optional q/k/v biases and Qwen3
// q/k-norm, SwiGLU MLP. Weights and activations are held in the placement's dtype on its device
// (fp32 or bf16 on the CPU, where libtorch 1.13 has no fp16 matmul; fp16/bf16/fp32 on a GPU);
// norms and logits are computed in fp32 as Hugging Face does, RoPE angles in float64 (rope.h:
// transformers forms them in fp32, about 2e-3 rad apart at position 32k). The KV cache decides
// its own storage; it is handed q/k/v on its device (KVCache::device()) in the dtype it asks for
// (KVCache::attend_dtype(), fp32 unless its kernels read fp16/bf16). A layer is four matmuls
// (fused QKV, o_proj, fused gate/up, down) and the per-row work of fused_ops.h: one kernel
// per norm, per QKV split with RoPE and per SwiGLU product on a GPU.
//
// A forward step takes a packed batch: each sequence contributes its new tokens (a prompt at
// prefill, one token at decode), the linear layers run once over all of them, and attention
// runs per sequence through the KV cache. Sequences of different lengths need no padding.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kvbench/kv/kv_cache.h"
#include "kvbench/model/fused_ops.h"
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
  // The fused projections a step runs (one matmul each): q, k, v rows stacked, and gate, up.
  // The Transformer builds them from the tensors above, which then become views into them.
  at::Tensor qkv_proj, qkv_bias;          // [(heads + 2 kv_heads) * hd, hidden], [...]
  at::Tensor gate_up_proj, gate_up_bias;  // [2 * intermediate, hidden], [2 * intermediate]
};

struct ModelWeights {
  at::Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  at::Tensor norm;     // [hidden]
  at::Tensor lm_head;  // [vocab, hidden]; the embedding itself when tied
};

// Where a model lives and the dtype its weights and activations are held in.
struct ModelPlacement {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;
  at::TensorOptions options() const { return at::TensorOptions().device(device).dtype(dtype); }
  std::string describe() const;  // e.g. "bfloat16 on cpu"
};

// Throws Error saying why when this build cannot compute in `placement` (fp16 on the CPU, a GPU
// without CUDA in libtorch, a dtype that is not a float).
void check_placement(const ModelPlacement& placement);

// The parts of a forward step a PhaseClock splits it into (forward_phase_names()): the step's
// inputs (token ids, positions and RoPE tables made and uploaded, the embedding lookup); the norms
// with their residual adds; the fused QKV projection with RoPE (and the QK norms); the KV cache's
// append and attention (a method's whole work in the step: quantizing, retention, the attention
// kernel); the output projection; the MLP; the final norm and LM head; and reading the next tokens
// back (marked by the generator).
enum class ForwardPhase { kEmbed, kNorm, kQkvRope, kAttend, kOutProj, kMlp, kHead, kSample };
const std::vector<std::string>& forward_phase_names();

class PhaseClock;

// One sequence's part of a forward step.
struct SequenceStep {
  int64_t seq = 0;              // id in the KV cache
  std::vector<int64_t> tokens;  // new token ids (>= 1)
};

class Transformer {
 public:
  Transformer(ModelConfig config, ModelWeights weights);

  // Loads a Hugging Face checkpoint directory (config.json, safetensors, generation_config.json),
  // checking every tensor's shape against the config, into `placement`.
  static Transformer load(const std::string& dir, const ModelPlacement& placement = {});
  // Random weights for `config` (for presets built in memory and tests): linear weights
  // N(0, 0.02), norm weights 1 + N(0, 0.1), biases N(0, 0.02); seeded. They are drawn in fp32 on
  // the placement's device with that device's generator (no host copy: a GPU-sized model is
  // made in GPU memory), then rounded to its dtype; on the CPU a dtype's weights are the fp32
  // ones rounded.
  static Transformer random(const ModelConfig& config, uint64_t seed,
                            const ModelPlacement& placement = {});
  // A copy with every weight converted to `placement`.
  Transformer to(const ModelPlacement& placement) const;

  // Runs one step. Returns fp32 logits [num_sequences, vocab] on the model's device for each
  // sequence's last new token, or [total_new_tokens, vocab] (sequences in order) when
  // `all_logits`. With `phases`, marks each ForwardPhase as it starts.
  at::Tensor forward(const std::vector<SequenceStep>& batch, KVCache& cache,
                     bool all_logits = false, PhaseClock* phases = nullptr) const;

  const ModelConfig& config() const { return config_; }
  // Tensors of the loaded checkpoint that the config does not read (sorted; RoPE caches named
  // rotary_emb.inv_freq and a tied lm_head.weight left out): weights for layers or biases the
  // config does not declare, which transformers would report as unused. Empty for random().
  const std::vector<std::string>& unused_tensors() const { return unused_tensors_; }
  const ModelWeights& weights() const { return weights_; }
  const ModelPlacement& placement() const { return placement_; }
  // Bytes of weights held in memory (in the placement's dtype).
  uint64_t weight_bytes() const;
  // Of those, the least a decode step of `batch` sequences reads: every weight once, but of an
  // embedding not tied to the lm_head only the batch's rows (a step embeds one token each).
  uint64_t decode_step_weight_bytes(int64_t batch) const;
  // Hugging Face tensor names and shapes this config expects, in checkpoint order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
      const ModelConfig& config);

 private:
  at::Tensor attention(const LayerWeights& w, int64_t layer, const at::Tensor& h,
                       const RopeTables& rope, const std::vector<SequenceStep>& batch,
                       KVCache& cache, PhaseClock* phases) const;

  ModelConfig config_;
  std::vector<std::string> unused_tensors_;
  ModelWeights weights_;
  ModelPlacement placement_;  // the embedding's device and dtype
  at::Tensor inv_freq_;       // [head_dim / 2] float64
};

// Each Hugging Face tensor name this config expects, bound to its slot in `weights` (layers
// resized to the config), in checkpoint order. A tied lm_head is not listed.
std::vector<std::pair<std::string, at::Tensor*>> bind_weights(const ModelConfig& config,
                                                              ModelWeights& weights);

// x * rsqrt(mean(x^2) + eps) * weight over the last dimension (Hugging Face LlamaRMSNorm): the
// normalisation in fp32, the result rounded to x's dtype before the weight is applied.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace kvbench
