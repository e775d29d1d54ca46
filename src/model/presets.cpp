#include "kvbench/model/presets.h"

#include <filesystem>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/model/safetensors.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/model/transformer.h"
#include "kvbench/report/atomic_file.h"

namespace kvbench {
namespace {

using nlohmann::json;

// Shared by every preset; each preset overrides what makes its architecture distinct.
json base_config(const char* architecture, const char* model_type) {
  return {{"architectures", {architecture}},
          {"model_type", model_type},
          {"vocab_size", 512},
          {"hidden_size", 128},
          {"intermediate_size", 352},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 4096},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "bfloat16"}};
}

// The published config.json of a real checkpoint: the keys every architecture shares, then
// its own values.
json real_config(const char* architecture, const char* model_type, const json& values) {
  json c = {{"architectures", {architecture}},
            {"model_type", model_type},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", false},
            {"torch_dtype", "bfloat16"}};
  c.merge_patch(values);
  return c;
}

json patched(json config, const json& patch) {
  config.merge_patch(patch);
  return config;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = {
      {"tiny-llama", "Llama 3 style: GQA 4:2, llama3 RoPE scaling, untied head",
       patched(base_config("LlamaForCausalLM", "llama"),
               {{"rope_theta", 500000.0},
                {"rope_scaling",
                 {{"rope_type", "llama3"},
                  {"factor", 8.0},
                  {"low_freq_factor", 1.0},
                  {"high_freq_factor", 4.0},
                  {"original_max_position_embeddings", 1024}}}})},
      {"tiny-mistral", "Mistral style: GQA 8:2, head_dim 16, sliding_window noted, fp16",
       patched(base_config("MistralForCausalLM", "mistral"),
               {{"num_attention_heads", 8}, {"sliding_window", 4096}, {"torch_dtype", "float16"}})},
      {"tiny-qwen2", "Qwen2 style: q/k/v biases, tied embeddings",
       patched(base_config("Qwen2ForCausalLM", "qwen2"), {{"tie_word_embeddings", true},
                                                          {"rope_theta", 1000000.0},
                                                          {"use_sliding_window", false},
                                                          {"sliding_window", 4096}})},
      {"tiny-qwen3", "Qwen3 style: q/k RMSNorm, head_dim 64 != hidden/heads, tied embeddings",
       patched(base_config("Qwen3ForCausalLM", "qwen3"), {{"head_dim", 64},
                                                          {"tie_word_embeddings", true},
                                                          {"rope_theta", 1000000.0},
                                                          {"attention_bias", false}})},
      {"llama-3-8b", "Llama-3-8B shapes (8.03 B parameters, GQA 32:8), random weights in memory",
       real_config("LlamaForCausalLM", "llama",
                   {{"vocab_size", 128256},
                    {"hidden_size", 4096},
                    {"intermediate_size", 14336},
                    {"num_hidden_layers", 32},
                    {"num_attention_heads", 32},
                    {"num_key_value_heads", 8},
                    {"max_position_embeddings", 8192},
                    {"rms_norm_eps", 1e-5},
                    {"rope_theta", 500000.0},
                    {"bos_token_id", 128000},
                    {"eos_token_id", 128001}}),
       true},
      {"mistral-7b",
       "Mistral-7B-v0.1 shapes (7.24 B parameters, GQA 32:8), random weights in memory",
       real_config("MistralForCausalLM", "mistral",
                   {{"vocab_size", 32000},
                    {"hidden_size", 4096},
                    {"intermediate_size", 14336},
                    {"num_hidden_layers", 32},
                    {"num_attention_heads", 32},
                    {"num_key_value_heads", 8},
                    {"max_position_embeddings", 32768},
                    {"rms_norm_eps", 1e-5},
                    {"rope_theta", 10000.0},
                    {"sliding_window", 4096},
                    {"bos_token_id", 1},
                    {"eos_token_id", 2}}),
       true},
      {"qwen2.5-7b",
       "Qwen2.5-7B shapes (7.62 B parameters, GQA 28:4, q/k/v biases), random weights in memory",
       real_config("Qwen2ForCausalLM", "qwen2",
                   {{"vocab_size", 152064},
                    {"hidden_size", 3584},
                    {"intermediate_size", 18944},
                    {"num_hidden_layers", 28},
                    {"num_attention_heads", 28},
                    {"num_key_value_heads", 4},
                    {"max_position_embeddings", 131072},
                    {"rms_norm_eps", 1e-6},
                    {"rope_theta", 1000000.0},
                    {"use_sliding_window", false},
                    {"sliding_window", 131072},
                    {"max_window_layers", 28},
                    {"bos_token_id", 151643},
                    {"eos_token_id", 151643}}),
       true},
  };
  return presets;
}

std::vector<std::string> model_preset_names() {
  std::vector<std::string> names;
  for (const auto& p : model_presets()) names.push_back(p.name);
  return names;
}

const ModelPreset& find_model_preset(const std::string& name) {
  for (const auto& p : model_presets()) {
    if (p.name == name) return p;
  }
  std::string hint = closest_match(name, model_preset_names());
  throw Error("unknown model preset '" + key_text(name) + "'" +
              (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
              "; presets: " + join(model_preset_names(), ", "));
}

void write_checkpoint(const Transformer& model, const json& config, const std::string& dir,
                      const std::map<std::string, std::string>& metadata) {
  // The storage dtype as the config's parser read it (torch_dtype or dtype; null: float32).
  const at::ScalarType dtype = dtype_from_name(model.config().torch_dtype);
  ModelWeights weights = model.weights();  // shallow copy: tensor handles share storage
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, slot] : bind_weights(model.config(), weights)) {
    tensors.emplace_back(name, slot->to(dtype).contiguous());
  }
  // The config's own ids, as they are (an eos list, a null bos): generation_config.json wins
  // over config.json at load, so an id invented here would give the model an EOS it never had.
  // Built before any file is written, so nothing is half-written if it fails.
  json generation = {{"do_sample", false}};
  for (const char* key : {"bos_token_id", "eos_token_id"})
    if (config.contains(key)) generation[key] = config[key];
  std::filesystem::create_directories(dir);
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  write_safetensors((std::filesystem::path(dir) / "model.safetensors").string(), tensors, meta);
  write_file_atomically(std::filesystem::path(dir) / "generation_config.json",
                        generation.dump(2) + "\n");
  write_file_atomically(std::filesystem::path(dir) / "config.json", config.dump(2) + "\n");
}

void check_preset_writable(const ModelPreset& preset) {
  KVB_CHECK(!preset.real_scale, "preset ", preset.name,
            " has real-model shapes and is built in memory only (model.preset with "
            "model.random_init: true); make-model writes the tiny presets");
}

void write_preset_checkpoint(const ModelPreset& preset, const std::string& dir, uint64_t seed) {
  check_preset_writable(preset);
  const ModelConfig config = parse_model_config(preset.config, preset.name);
  json marked = preset.config;
  // Extra config.json keys are ignored by transformers; reports use this to flag the weights.
  marked["kvbench"] = {{"random_weights", true}, {"preset", preset.name}, {"seed", seed}};
  write_checkpoint(Transformer::random(config, seed), marked, dir);
  // A complete model directory: the tiny tokenizer's specials put BOS at 1 and EOS at 2.
  KVB_CHECK(
      preset.config.value("bos_token_id", 1) == 1 && preset.config.value("eos_token_id", 2) == 2,
      "preset ", preset.name, ": the tiny tokenizer needs bos_token_id 1 and eos_token_id 2");
  write_tiny_tokenizer(dir, preset.config.value("vocab_size", 512));
}

}  // namespace kvbench
