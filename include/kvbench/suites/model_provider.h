// The run's model, loaded once on first use and shared by every cell (suites that need no
// model, like `kernels`, never trigger a load). A load failure is remembered, so each model
// cell fails with the same one-line error instead of retrying.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"
#include "kvbench/suites/preparation.h"
#include "kvbench/suites/run_spec.h"

namespace kvbench {

class ModelProvider {
 public:
  explicit ModelProvider(ModelSpec spec);
  // Loads (or builds, or writes then loads) the model on the first call.
  const Transformer& get();
  // The model's config without loading weights (config.json, or the preset's); nullptr when
  // no model is configured. Throws Error for an unreadable config.
  const ModelConfig* config_only();
  // Where the model computes and in which dtype (model.compute_dtype on the run's device).
  ModelPlacement placement() const;
  // Storage dtype of the uncompressed KV cache: model.dtype, or the checkpoint's for "auto".
  at::ScalarType kv_dtype();
  // The model's tokenizer, loaded on first use: <path>/tokenizer.json, or the tiny tokenizer
  // make-model writes when the preset is built in memory.
  const Tokenizer& tokenizer();
  // What the report says about the model: source, architecture, sizes, random weights or not.
  // Empty until loaded.
  nlohmann::json identity() const;
  // The codec of a resolved method entry, prepared for the model (prepare_codec) the first time
  // a cell asks and shared by later cells with the same codec, so the untimed prepare step runs
  // once per run and codec.
  const PreparedCodec& prepared_codec(const nlohmann::json& method);
  // The report's `preparation` object for a method whose codec was prepared: the step's report
  // plus "cell": the id of the cell it ran in. Null when it needed none or has not run.
  nlohmann::json preparation(const nlohmann::json& method) const;
  // Marks the cell now running, so the prepare step can name the cell it ran in.
  void set_current_cell(const std::string& id) { current_cell_ = id; }

 private:
  ModelSpec spec_;
  std::unique_ptr<Transformer> model_;
  std::optional<ModelConfig> config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  nlohmann::json identity_;
  std::optional<std::string> error_;
  std::map<std::string, PreparedCodec> prepared_;  // by the codec entry's JSON
  std::string current_cell_;
};

}  // namespace kvbench
