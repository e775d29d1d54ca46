#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/workload.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/core/time.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/tiny_tokenizer.h"

namespace kvbench {
namespace {

// make-model marks its checkpoints in config.json: {"kvbench": {"random_weights", "preset",
// "seed"}}; any other checkpoint is taken as trained. Null when unmarked.
nlohmann::json marker(const std::string& dir) {
  // (Not a file, e.g. a directory: unmarked here; loading the model says what is wrong.)
  const std::filesystem::path path = std::filesystem::path(dir) / "config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return nlohmann::json();
  std::ifstream in(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, json_depth_limit(path.string()), /*allow_exceptions=*/false);
  } catch (const Error&) {  // nested too deep: unmarked here, the loader says what is wrong
  }
  if (!j.is_object() || !j.contains("kvbench")) return nlohmann::json();
  // The mark's fields as kvbench writes them: a wrong type names its key, not a json error.
  const nlohmann::json& mark = j["kvbench"];
  KVB_CHECK(mark.is_object(), path.string(), ": \"kvbench\" must be an object");
  const auto check = [&](const char* key, bool ok, const char* expected) {
    KVB_CHECK(!mark.contains(key) || ok, path.string(), ": kvbench.", key, " must be ", expected,
              ", got ", mark[key].dump());
  };
  check("preset", mark.contains("preset") && mark["preset"].is_string(), "a string");
  check("seed", mark.contains("seed") && mark["seed"].is_number_integer(), "an integer");
  check("random_weights", mark.contains("random_weights") && mark["random_weights"].is_boolean(),
        "a boolean");
  return mark;
}

// Where a preset is written on first use: nothing there yet, or an empty directory (made ahead,
// as make-model accepts).
bool nothing_at(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return true;
  return std::filesystem::is_directory(dir, ec) && std::filesystem::is_empty(dir, ec);
}

// A preset checkpoint written earlier must be the one this run asks for, or the report would
// describe weights the run did not use.
void check_marker_matches(const ModelSpec& spec, const nlohmann::json& mark) {
  if (spec.preset.empty()) return;
  // A checkpoint kvbench did not write is not the preset: loading it under the preset's name
  // would mislabel the report (a missing config.json is the loader's to report).
  std::error_code ec;
  KVB_CHECK(mark.is_object() || !std::filesystem::is_regular_file(
                                    std::filesystem::path(spec.path) / "config.json", ec),
            "model: ", spec.path,
            " holds a checkpoint kvbench did not write (its config.json has no \"kvbench\" "
            "mark), but the config asks for preset ",
            spec.preset, "; set model.preset to \"\" to load it as it is, or change model.path");
  if (!mark.is_object()) return;
  const std::string preset = mark.value("preset", "");
  // kvbench train marks its checkpoints without a preset: trained weights, not the preset's.
  KVB_CHECK(!preset.empty(), "model: ", spec.path,
            " holds a checkpoint trained by kvbench train, but the config asks for preset ",
            spec.preset, "; remove model.preset to load it, or change model.path");
  const int64_t seed = mark.value("seed", int64_t{-1});
  KVB_CHECK(preset == spec.preset && seed == spec.seed, "model: ", spec.path, " holds preset ",
            preset, " seed ", seed, " but the config asks for ", spec.preset, " seed ", spec.seed,
            "; remove the directory or change model.path");
}

void warn_about_checkpoint(const Transformer& model, const std::string& path, bool random) {
  const std::vector<std::string>& unused = model.unused_tensors();
  if (!unused.empty()) {
    std::vector<std::string> shown(unused.begin(),
                                   unused.begin() + std::min<size_t>(unused.size(), 4));
    spdlog::warn(
        "model: {}: {} tensor(s) of the checkpoint are not used by its config.json ({}{}); "
        "check num_hidden_layers, attention_bias and mlp_bias against the weights",
        path, unused.size(), join(shown, ", "), unused.size() > shown.size() ? ", ..." : "");
  }
  const std::optional<int64_t>& window = model.config().sliding_window;
  if (window && !random) {
    spdlog::warn(
        "model: {}: sliding_window {} is recorded but not applied (kvbench attends every "
        "token): prompts longer than {} tokens are not computed as the checkpoint's "
        "reference implementation computes them",
        path, *window, *window);
  }
}

}  // namespace

ModelProvider::ModelProvider(ModelSpec spec) : spec_(std::move(spec)) {}

ModelPlacement ModelProvider::placement() const {
  return {at::Device(spec_.device), dtype_from_name(spec_.compute_dtype)};
}

const Transformer& ModelProvider::get() {
  if (model_) return *model_;
  if (error_) throw Error(*error_);
  try {
    Stopwatch sw;
    const ModelPlacement placement = this->placement();
    check_placement(placement);
    bool random = spec_.random_init;
    // The seed the weights were drawn from: this run's, or the one a kvbench random-weight
    // checkpoint records; null for any other (trained) checkpoint.
    nlohmann::json weight_seed = nullptr;
    if (spec_.random_init) {
      weight_seed = spec_.seed;
      const ModelPreset& p = find_model_preset(spec_.preset);
      const ModelConfig config = parse_model_config(p.config, p.name);
      check_fits_on(placement, model_weight_bytes(config, placement.dtype),
                    "model: preset " + p.name + " (" + placement.describe() + ")");
      model_ = std::make_unique<Transformer>(Transformer::random(config, spec_.seed, placement));
    } else {
      KVB_CHECK(!spec_.path.empty(),
                "model: none configured; set model.path to a Hugging Face checkpoint directory, "
                "or model.preset with model.random_init: true");
      if (!spec_.preset.empty() && nothing_at(spec_.path)) {
        spdlog::info("model: writing preset {} to {} (first use)", spec_.preset, spec_.path);
        write_preset_checkpoint(find_model_preset(spec_.preset), spec_.path, spec_.seed);
      }
      const nlohmann::json mark = marker(spec_.path);
      check_marker_matches(spec_, mark);
      check_fits_on(placement, model_weight_bytes(load_model_config(spec_.path), placement.dtype),
                    "model: " + spec_.path + " (" + placement.describe() + ")");
      model_ = std::make_unique<Transformer>(Transformer::load(spec_.path, placement));
      random = mark.is_object() && mark.value("random_weights", false);
      if (random && mark.contains("seed")) weight_seed = mark["seed"];
    }
    const ModelConfig& c = model_->config();
    identity_ = {{"path", spec_.path},
                 {"preset", spec_.preset},
                 {"seed", weight_seed},
                 {"random_weights", random},
                 {"config", c.to_json()},
                 {"weight_bytes", model_->weight_bytes()},
                 {"compute_dtype", dtype_name(placement.dtype)},
                 {"device", placement.device.str()},
                 {"kv_dtype", dtype_name(kv_dtype())},
                 {"load_s", sw.seconds()}};
    if (random)
      spdlog::warn(
          "model: random weights; accuracy, output lengths and fidelity rankings mean nothing "
          "(speed and memory do)");
    warn_about_checkpoint(*model_, spec_.path, random);
    return *model_;
  } catch (const std::exception& e) {
    error_ = e.what();
    throw;
  }
}

const ModelConfig* ModelProvider::config_only() {
  if (model_) return &model_->config();
  if (!config_) {
    if (!spec_.preset.empty() && (spec_.random_init || nothing_at(spec_.path))) {
      const ModelPreset& p = find_model_preset(spec_.preset);
      config_ = parse_model_config(p.config, p.name);
    } else if (!spec_.path.empty()) {
      // A checkpoint written for another preset or seed is the config's mistake: said here, so
      // that validate and --dry-run refuse it before any cell loads it.
      try {
        check_marker_matches(spec_, marker(spec_.path));
      } catch (const Error& e) {
        const std::string what = e.what(), prefix = "model: ";
        throw ConfigError("model.path",
                          what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what);
      }
      config_ = load_model_config(spec_.path);
    } else {
      return nullptr;
    }
  }
  return &*config_;
}

const Tokenizer& ModelProvider::tokenizer() {
  if (!tokenizer_) {
    const Transformer& m = get();  // a preset written on first use brings its tokenizer along
    tokenizer_ = std::make_unique<Tokenizer>(
        spec_.random_init
            ? Tokenizer::from_json(tiny_tokenizer_json(static_cast<int>(m.config().vocab_size)),
                                   tiny_tokenizer_config(), nullptr, spec_.preset + " (in memory)")
            : Tokenizer::load(spec_.path));
  }
  return *tokenizer_;
}

at::ScalarType ModelProvider::kv_dtype() {
  if (spec_.dtype != "auto") return dtype_from_name(spec_.dtype);
  // On a GPU the cache holds what the model computes, as a deployment's does: bf16 pages
  // beside fp16 activations would send every layer's q, k and v through fp32 and round the
  // decode kernel's query to bf16.
  if (spec_.device == "cuda" && spec_.compute_dtype != "float32")
    return dtype_from_name(spec_.compute_dtype);
  const ModelConfig* c = config_only();
  KVB_CHECK(c, "model: none configured");
  return dtype_from_name(c->torch_dtype);
}

nlohmann::json ModelProvider::identity() const { return identity_; }

namespace {

// The part of a method entry that decides its codec: the `codec` object of a retention method,
// else the entry itself.
std::string codec_key(const nlohmann::json& method) {
  return (method.contains("codec") ? method["codec"] : method).dump();
}

}  // namespace

const PreparedCodec& ModelProvider::prepared_codec(const nlohmann::json& method) {
  const std::string key = codec_key(method);
  auto it = prepared_.find(key);
  if (it != prepared_.end()) return it->second;
  const Transformer& m = get();
  std::shared_ptr<const Codec> codec = make_codec(method, kv_dtype());
  const bool text = codec->needs_preparation() && codec->calibration().prompts > 0 &&
                    codec->calibration().source == "text";
  PreparedCodec p = prepare_codec(codec, m, text ? &tokenizer() : nullptr);
  if (!p.report.is_null()) p.report["cell"] = current_cell_;
  return prepared_.emplace(key, std::move(p)).first->second;
}

nlohmann::json ModelProvider::preparation(const nlohmann::json& method) const {
  auto it = prepared_.find(codec_key(method));
  return it == prepared_.end() ? nlohmann::json() : it->second.report;
}

}  // namespace kvbench
