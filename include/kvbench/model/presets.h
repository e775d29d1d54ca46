// Model presets. Tiny ones, one per supported architecture, for tests, examples and CI: built
// in memory (`random_init`) or written as real Hugging Face checkpoints by `kvbench make-model`.
// Real-scale ones carry the exact config.json of public checkpoints (Llama-3-8B, Mistral-7B,
// Qwen2.5-7B) so speed and memory can be measured at the seed paper's scale without
// downloads: their random weights are only ever built in memory, never written.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

class Transformer;

struct ModelPreset {
  std::string name;  // "tiny-llama"
  std::string summary;
  nlohmann::json config;    // a complete Hugging Face config.json
  bool real_scale = false;  // built in memory only (make-model refuses it)
};

const std::vector<ModelPreset>& model_presets();
std::vector<std::string> model_preset_names();
// Throws Error listing the presets when `name` is unknown.
const ModelPreset& find_model_preset(const std::string& name);
// Writes config.json, generation_config.json and model.safetensors (weights from
// Transformer::random(seed), stored in the preset's torch_dtype) into `dir`.
void write_preset_checkpoint(const ModelPreset& preset, const std::string& dir, uint64_t seed);
// Throws unless write_preset_checkpoint can write the preset (a tiny one, not real-scale).
void check_preset_writable(const ModelPreset& preset);
// Writes `model`'s weights as a Hugging Face checkpoint in `dir` with `config` as config.json;
// `metadata` joins model.safetensors' {"format": "pt"}.
void write_checkpoint(const Transformer& model, const nlohmann::json& config,
                      const std::string& dir,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace kvbench
