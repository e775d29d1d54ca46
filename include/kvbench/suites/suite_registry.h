// The suite factory: names, one-line summaries and parameter tables of every suite.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

struct SuiteInfo {
  std::string name;
  std::string summary;
  std::vector<ParamSpec> params;
  bool needs_model = true;  // false: the suite never loads the model (and its ids ignore it)
  std::function<std::unique_ptr<Suite>()> make;
  // Rules across parameters that need no model (one of two keys, a grid of two points), run
  // by resolve_suite so that validate and --dry-run refuse what a run would; throws Error
  // (ConfigError naming a parameter). `given`: the suite entry as the config wrote it, to tell
  // a key set to its default from one left out; null where only resolved parameters exist (a
  // report's cells).
  std::function<void(const nlohmann::json& params, const nlohmann::json& given)> check;
  // Rules across the suite's parameters and a method that need no model (the kernels suite on
  // the CPU: a codec fitted to a model, a group that does not divide head_dim; serving: chunked
  // prefill with a policy that selects from the whole prefill), run by expand_cells with the
  // run's device ("cpu" or "cuda"); throws Error.
  std::function<void(const nlohmann::json& params, const nlohmann::json& method,
                     const std::string& device)>
      check_method;
};

const std::vector<SuiteInfo>& suite_catalog();
std::vector<std::string> suite_names();
// Throws Error listing the known suites when `name` is unknown.
const SuiteInfo& find_suite(const std::string& name);
// Validates one `suites[i]` entry and returns it with defaults filled in. A non-empty
// `*_file` / `*_dir` parameter must name an existing file / directory (a config error naming
// the key, not a failed cell per method).
nlohmann::json resolve_suite(const nlohmann::json& entry, const std::string& path);
// A report cell's {"method", "params"} resolved under this version's defaults, so that a cell
// from a report written before a parameter existed matches today's (compare). Throws Error
// when the cell has a parameter this version does not know.
nlohmann::json resolve_cell_parts(const nlohmann::json& cell);

}  // namespace kvbench
