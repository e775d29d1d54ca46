// The subset of a Hugging Face config.json that the Llama-family transformer needs, parsed
// and checked. Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and
// Qwen3ForCausalLM; anything else is rejected by name rather than run wrongly.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

enum class Architecture { kLlama, kMistral, kQwen2, kQwen3 };

struct RopeScaling {
  std::string type = "default";  // default | linear | llama3
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string architecture;  // as written: "LlamaForCausalLM"
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama) projections carry biases
  bool o_proj_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;                   // Qwen3: RMSNorm over head_dim on q and k, before RoPE
  std::optional<int64_t> sliding_window;  // noted, not applied: attention is always full
  std::string torch_dtype = "float32";    // the checkpoint's storage dtype
  std::vector<int64_t> eos_token_ids;
  std::optional<int64_t> bos_token_id;

  int64_t group_size() const { return num_heads / num_kv_heads; }
  // K and V bytes per token for all layers at `element_bytes` per value.
  uint64_t kv_bytes_per_token(int element_bytes) const {
    return 2ull * num_layers * num_kv_heads * head_dim * element_bytes;
  }
  nlohmann::json to_json() const;
};

const char* architecture_name(Architecture arch);
// Parses config.json content; `source` (a path) prefixes error messages.
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source);
// Reads <dir>/config.json, and <dir>/generation_config.json when present (its eos_token_id
// wins, as in transformers' generate).
ModelConfig load_model_config(const std::string& dir);
// RoPE inverse frequencies [head_dim / 2] in float64, with the config's scaling applied.
at::Tensor rope_inverse_frequencies(const ModelConfig& config);
// at::ScalarType of "float32" | "float16" | "bfloat16"; throws Error otherwise.
at::ScalarType dtype_from_name(const std::string& name);
const char* dtype_name(at::ScalarType dtype);

}  // namespace kvbench
