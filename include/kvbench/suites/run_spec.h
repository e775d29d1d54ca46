// RunSpec: a validated run configuration with every default filled in. `resolved` is the same
// configuration as JSON, echoed into the report so a run can be repeated exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

struct CudaInfo;

// The largest model.seed (and make-model --seed): 2^53 - 1, every seed exact in a double.
constexpr uint64_t kMaxWeightSeed = (uint64_t{1} << 53) - 1;

struct ModelSpec {
  std::string path;    // HF checkpoint directory; empty when no suite needs a model
  std::string dtype;   // KV storage dtype: auto (the checkpoint's) | float32 | float16 | bfloat16
  std::string preset;  // tiny preset name, or empty
  bool random_init = false;  // build `preset` in memory
  int64_t seed = 0;          // weight seed of `preset`
  // Weights' and activations' dtype: float32 | bfloat16 | float16, resolved from "auto" (float32
  // on the CPU, float16 on a GPU).
  std::string compute_dtype = "float32";
  std::string device = "cpu";  // where the model computes: the run's `device`
};

struct SuiteEntry {
  std::string name;
  nlohmann::json params;  // resolved parameters, "name" excluded
};

struct RunSpec {
  std::string name;
  ModelSpec model;
  std::string device;     // cpu | cuda
  std::string attention;  // decode attention backend: cpu | reference | paged
  int threads = 1;
  bool threads_auto = false;  // threads was "auto" (this machine's cores): shards ignore it
  uint64_t seed = 0;
  std::vector<nlohmann::json> methods;  // resolved method entries, each with "name"
  std::vector<SuiteEntry> suites;
  std::string output_dir;
  nlohmann::json resolved;
};

// The top-level keys a config may have, for `validate` and docs/config.md.
const std::vector<std::string>& config_keys();
// Validates a parsed config (an object) and fills defaults. Throws ConfigError naming the key.
// `default_name` names the run when the config has no "name" (usually the file's stem).
RunSpec parse_run_spec(const nlohmann::json& config, const std::string& default_name);
// Throws ConfigError("device", ...) when the run asks for CUDA and no device is visible.
void check_device(const RunSpec& spec, const CudaInfo& cuda);

}  // namespace kvbench
