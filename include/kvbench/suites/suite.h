// A suite turns engine runs into records (raw samples, one per measured point) and a summary.
// Each suite is one class; the registry maps names to factories and parameter tables.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/environment.h"
#include "kvbench/core/progress.h"
#include "kvbench/core/table.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/run_spec.h"

namespace kvbench {

// Everything one cell sees. References stay valid for the duration of Suite::run.
struct CellContext {
  const std::string& cell_id;
  const RunSpec& spec;
  const Environment& env;
  const nlohmann::json& method;  // resolved method entry
  const nlohmann::json& params;  // resolved suite parameters
  uint64_t seed;                 // the cell's own seed, derived from the run seed and cell id
  Progress& progress;
  ModelProvider& model;  // loads the run's model on first use
  // Where shared checks (e.g. check_generation_fits) leave warnings for the cell's report;
  // the runner adds them to the suite's own. Null: none are kept.
  std::vector<std::string>* warnings = nullptr;
};

struct CellOutput {
  nlohmann::json records = nlohmann::json::array();  // each: {"kind", ..., "samples_s": [...]}
  nlohmann::json summary = nlohmann::json::object();
  std::vector<std::string> warnings;
};

// What a memory estimate may look at without loading weights or allocating anything.
struct EstimateContext {
  const nlohmann::json& params;  // resolved suite parameters
  const nlohmann::json& method;  // resolved method entry
  const ModelConfig* model;      // the run's model config, or nullptr when none is configured
  double kv_bytes_per_token;     // the method's cache bytes per token, all layers (upper bound)
  const Environment& env;
  at::ScalarType weight_dtype = at::kFloat;  // the model's compute dtype
  bool gpu = false;                          // the run's device is cuda: bytes of GPU memory
  at::ScalarType kv_dtype = at::kFloat;      // what the caches store (ModelProvider::kv_dtype)
  bool paged = false;                        // attention: paged (the paged caches)
  // What the method's cache holds once for all sequences (method_shared_bytes).
  uint64_t shared_bytes = 0;
  // attention: reference, which dequantizes a layer's whole K/V to fp32 before attending. Read
  // by the kernels suite's estimate; the model suites attend one sequence's layer at a time on
  // every backend that dequantizes, and generation_bytes counts that copy (its kv_fp32) always.
  bool reference_attention = false;
  // kv_bytes_per_token, or on the paged path the bound for sequences of `context` tokens as the
  // pages store them (method_kv_bytes_per_token's `context`: whole pages, and KIVI's rings from
  // the first token, at a short context more per token than the formula's bound).
  double kv_bytes_per_token_at(int64_t context) const;
};

class Suite {
 public:
  virtual ~Suite() = default;
  // Upper estimate of the bytes the cell needs at its peak (model weights included), for
  // `run --dry-run`, which refuses plans that cannot fit.
  virtual uint64_t estimate_bytes(const EstimateContext& ctx) const = 0;
  // Runs the cell; throws Error (or any std::exception) to fail it.
  virtual CellOutput run(const CellContext& ctx) = 0;
  // Human summary of a finished cell, printed after the run.
  virtual Table summary_table(const CellOutput& output) const = 0;
};

}  // namespace kvbench
