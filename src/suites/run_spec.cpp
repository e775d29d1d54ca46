#include "kvbench/suites/run_spec.h"

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/param_spec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/presets.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {
namespace {

using nlohmann::json;

const std::vector<ParamSpec>& model_specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::path("path", "",
                      "Hugging Face checkpoint directory (config.json, *.safetensors); with "
                      "`preset`, written there on first use if absent"),
      ParamSpec::string("preset", "",
                        "random-weight preset: tiny-llama, tiny-mistral, tiny-qwen2, tiny-qwen3 "
                        "(see kvbench make-model), or one with a real model's shapes: llama-3-8b, "
                        "mistral-7b, qwen2.5-7b (with random_init)"),
      ParamSpec::boolean("random_init", false,
                         "build `preset` in memory with random weights instead of files"),
      ParamSpec::integer("seed", 0, "weight seed of `preset`").at_least(0),
      ParamSpec::string(
          "dtype", "auto",
          "storage dtype of the uncompressed KV cache (the weights' dtype is "
          "compute_dtype); auto = the checkpoint's torch_dtype (on cuda with a 16-bit "
          "compute_dtype, that dtype)",
          {"auto", "float32", "float16", "bfloat16"}),
      ParamSpec::string("compute_dtype", "auto",
                        "dtype of the weights and activations; auto = float32 on the CPU, "
                        "float16 on a GPU (float16 needs device cuda)",
                        {"auto", "float32", "float16", "bfloat16"}),
  };
  return specs;
}

const std::vector<ParamSpec>& output_specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::path("dir", "results", "directory the report is written to"),
  };
  return specs;
}

// The scalar top-level keys; model/output/methods/suites are checked separately.
const std::vector<ParamSpec>& scalar_specs() {
  static const std::vector<ParamSpec> specs = {
      ParamSpec::string("name", "", "run name; default: the config file's stem"),
      ParamSpec::string("description", "", "free text, copied into the report"),
      ParamSpec::string("device", "cpu", "where attention runs", {"cpu", "cuda"}),
      ParamSpec::string("attention", "cpu",
                        "decode attention backend: cpu (fused, reads the stored format), "
                        "reference (dequantize, then plain attention: the oracle) or paged (the "
                        "GPU path's paged formats and appender, reference attention over the "
                        "pages)",
                        {"cpu", "reference", "paged"}),
      ParamSpec::integer("threads", "auto", "intra-op CPU threads; auto = all cores")
          .range(1, 4096)
          .or_auto(),
      ParamSpec::integer("seed", 0, "seed of every random choice in the run").at_least(0),
  };
  return specs;
}

json resolve_object(const json& config, const std::string& key,
                    const std::vector<ParamSpec>& specs) {
  return resolve_params(config.contains(key) ? config[key] : json::object(), specs, key, {});
}

std::vector<json> resolve_list(const json& config, const std::string& key, const json& fallback,
                               json (*resolve_entry)(const json&, const std::string&)) {
  if (!config.contains(key) && fallback.is_null()) {
    throw ConfigError(key, "required key missing; expected a list like [{\"name\": ...}]");
  }
  const json& list = config.contains(key) ? config[key] : fallback;
  if (!list.is_array()) {
    throw ConfigError(
        key, "expected a list of objects like [{\"name\": ...}], got " + json_type_name(list));
  }
  if (list.empty()) throw ConfigError(key, "expected at least one entry, got an empty list");
  std::vector<json> out;
  for (size_t i = 0; i < list.size(); ++i) {
    out.push_back(resolve_entry(list[i], key + "[" + std::to_string(i) + "]"));
  }
  return out;
}

void check_model_spec(const ModelSpec& m) {
  if (!m.preset.empty()) {
    try {
      find_model_preset(m.preset);
    } catch (const Error& e) {
      throw ConfigError("model.preset", e.what());
    }
  }
  if (m.random_init && m.preset.empty()) {
    throw ConfigError("model.random_init", "needs model.preset (which preset to build)");
  }
  // A checkpoint's weights are its files': the seed would change the cells' ids, not the model.
  if (m.seed != 0 && m.preset.empty()) {
    throw ConfigError("model.seed",
                      "seeds the random weights of model.preset; without a preset the "
                      "checkpoint has its own (remove model.seed)");
  }
  if (m.random_init && !m.path.empty()) {
    throw ConfigError("model.random_init", "builds the model in memory; remove model.path");
  }
  if (!m.preset.empty() && !m.random_init && m.path.empty()) {
    throw ConfigError("model.preset",
                      "needs model.path (where the checkpoint is written on first use) or "
                      "model.random_init: true");
  }
}

std::string resolve_compute_dtype(const std::string& configured, const std::string& device) {
  if (configured == "auto") return device == "cuda" ? "float16" : "float32";
  if (configured == "float16" && device != "cuda") {
    throw ConfigError("model.compute_dtype",
                      "\"float16\" needs device \"cuda\" (libtorch's CPU matrix multiply has no "
                      "fp16 kernels); use \"bfloat16\" or \"float32\" on the CPU");
  }
  return configured;
}

}  // namespace

void check_device(const RunSpec& spec, const CudaInfo& cuda) {
  if (spec.device != "cuda" || cuda.device_count > 0) return;
  throw ConfigError("device", "\"cuda\" requested but no CUDA device is visible (" + cuda.error +
                                  "); use \"cpu\"");
}

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    for (const auto& s : scalar_specs()) k.push_back(s.name);
    for (const char* extra : {"model", "methods", "suites", "output"}) k.push_back(extra);
    return k;
  }();
  return keys;
}

RunSpec parse_run_spec(const json& config, const std::string& default_name) {
  if (!config.is_object()) {
    throw ConfigError("", "expected a JSON object at the top level, got " + json_type_name(config));
  }
  // "grid" is taken apart before this (config_loader); listed so a typo of it gets a hint.
  std::vector<std::string> known = config_keys();
  known.push_back("grid");
  // A training recipe (configs/train-*.json) given to run or validate: say what it is.
  if ((config.contains("stages") || config.contains("tasks")) && !config.contains("suites"))
    throw ConfigError("",
                      "this is a training recipe (it has stages or tasks, no suites): "
                      "run it with kvbench train --config FILE --out DIR");
  check_known_keys(config, known, "");
  if (config.contains("grid"))
    throw ConfigError("grid", "a sweep is expanded by kvbench run or validate, not here");
  json resolved =
      resolve_params(config, scalar_specs(), "", {"model", "methods", "suites", "output"});
  if (resolved["name"] == "") resolved["name"] = default_name;
  const bool threads_auto = resolved["threads"] == "auto";
  if (threads_auto) resolved["threads"] = available_cores();
  resolved["model"] = resolve_object(config, "model", model_specs());
  resolved["output"] = resolve_object(config, "output", output_specs());
  auto methods = resolve_list(config, "methods", json::array({{{"name", "full"}}}), resolve_method);
  auto suites = resolve_list(config, "suites", json(), resolve_suite);
  resolved["methods"] = methods;
  resolved["suites"] = suites;

  RunSpec spec;
  spec.name = resolved["name"];
  const json& m = resolved["model"];
  spec.device = resolved["device"];
  // At most 2^53 - 1, checked exactly (a range is checked in double, where 2^63, past int64,
  // and the largest int64 are one number); make-model's --seed takes the same.
  if (m["seed"].get<uint64_t>() > kMaxWeightSeed)
    throw ConfigError("model.seed",
                      "expected integer in [0, 2^53 - 1 = " + std::to_string(kMaxWeightSeed) +
                          "], got " + m["seed"].dump());
  spec.model = {m["path"], m["dtype"], m["preset"], m["random_init"], m["seed"]};
  spec.model.device = spec.device;
  spec.model.compute_dtype = resolve_compute_dtype(m["compute_dtype"], spec.device);
  check_model_spec(spec.model);
  resolved["model"]["compute_dtype"] = spec.model.compute_dtype;  // what "auto" became
  spec.attention = resolved["attention"];
  spec.threads = resolved["threads"];
  spec.threads_auto = threads_auto;
  spec.seed = resolved["seed"];
  spec.methods = methods;
  for (const auto& s : suites) {
    json params = s;
    params.erase("name");
    spec.suites.push_back({s["name"], params});
  }
  // Caught here rather than by every cell at run time: a suite that runs a model, and none.
  if (spec.model.path.empty() && !spec.model.random_init) {
    for (size_t i = 0; i < spec.suites.size(); ++i) {
      if (!find_suite(spec.suites[i].name).needs_model) continue;
      throw ConfigError("model", "none configured, but suites[" + std::to_string(i) + "] (" +
                                     spec.suites[i].name +
                                     ") runs one; set model.path to a Hugging Face checkpoint "
                                     "directory, or model.preset with model.random_init: true");
    }
  }
  // The kernels suite on the CPU times attention kernels; "paged" there is storage with
  // reference attention, nothing to time (on cuda the suite times the GPU kernels).
  for (size_t i = 0; i < spec.suites.size(); ++i)
    if (spec.suites[i].name == "kernels" && spec.attention == "paged" && spec.device != "cuda")
      throw ConfigError("suites[" + std::to_string(i) + "]",
                        "kernels: attention \"paged\" on the CPU is the GPU path's storage with "
                        "reference attention, not a kernel to time; use attention \"cpu\" or "
                        "\"reference\" (or device \"cuda\")");
  spec.output_dir = resolved["output"]["dir"];
  if (spec.output_dir.empty())  // (an unset shell variable in --out, say): no folder to write to
    throw ConfigError("output.dir", "expected a directory path, got \"\"");
  spec.resolved = resolved;
  return spec;
}

}  // namespace kvbench
