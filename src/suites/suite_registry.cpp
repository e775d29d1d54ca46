#include "kvbench/suites/suite_registry.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/accuracy_suite.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/fidelity_suite.h"
#include "kvbench/suites/kernels_suite.h"
#include "kvbench/suites/latency_suite.h"
#include "kvbench/suites/output_length_suite.h"
#include "kvbench/suites/predictor_suite.h"
#include "kvbench/suites/serving_suite.h"
#include "kvbench/suites/throughput_suite.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {

namespace {

void check_accuracy(const nlohmann::json& p, const nlohmann::json&) {
  const std::string task = p["task"], file = p["data_file"];
  KVB_CHECK(task.empty() != file.empty(), "accuracy: give exactly one of task and data_file");
  if (!task.empty() && p["samples"].get<int64_t>() < 1)
    throw ConfigError("samples", "must be at least 1 for a synthetic task");
  if (p["max_prompt_tokens"].get<int64_t>() == 1)  // a middle cut keeps a first and a last half
    throw ConfigError("max_prompt_tokens", "expected 0 (the model's length) or at least 2, got 1");
  const nlohmann::json& given = p["task_params"];
  if (task.empty()) {
    if (!given.empty())
      throw ConfigError("task_params",
                        "sets a synthetic task's parameters; data_file rows are "
                        "used as written (remove task_params or name a task)");
    return;
  }
  if (given.contains("target_tokens"))
    throw ConfigError("task_params.target_tokens",
                      "is the suite's own key; set target_tokens beside task");
  if (given.contains("seed"))
    throw ConfigError("task_params.seed", "is set per sample: the run's seed + the sample's index");
  std::vector<std::string> keys;  // what task_params may set: not the two above
  for (const ParamSpec& s : task_param_specs(task))
    if (s.name != "target_tokens" && s.name != "seed") keys.push_back(s.name);
  check_known_keys(given, keys, "task_params");
  resolve_task_params(task, given, "task_params");
}

// Each control temperature is its own row and record key, at 2 decimals: two that round alike
// would share a key and overwrite each other's lengths.
void check_output_length(const nlohmann::json& p, const nlohmann::json&) {
  std::set<std::string> seen;
  for (const auto& t : p["control_temperatures"]) {
    const std::string key = format_fixed(t.get<double>(), 2);
    if (!seen.insert(key).second)
      throw ConfigError("control_temperatures",
                        "lists " + key + " twice (at 2 decimals, as its rows and records name it)");
  }
}

void check_fidelity(const nlohmann::json& p, const nlohmann::json&) {
  KVB_CHECK(p["text"].get<std::string>().empty() || p["text_file"].get<std::string>().empty(),
            "fidelity: give text or text_file, not both");
}

}  // namespace

const std::vector<SuiteInfo>& suite_catalog() {
  static const std::vector<SuiteInfo> catalog = {
      {"kernels", KernelsSuite::kSummary, KernelsSuite::param_specs(),
       /*needs_model=*/false, [] { return std::make_unique<KernelsSuite>(); },
       [](const nlohmann::json& p, const nlohmann::json&) {
         check_listed_once(p, {"contexts", "kv_heads"});
       },
       KernelsSuite::check_method},
      {"latency",
       LatencySuite::kSummary,
       LatencySuite::param_specs(),
       true,
       [] { return std::make_unique<LatencySuite>(); },
       {},
       {}},
      {"throughput",
       ThroughputSuite::kSummary,
       ThroughputSuite::param_specs(),
       true,
       [] { return std::make_unique<ThroughputSuite>(); },
       [](const nlohmann::json& p, const nlohmann::json&) { ThroughputSuite::check_params(p); },
       {}},
      {"fidelity",
       FidelitySuite::kSummary,
       FidelitySuite::param_specs(),
       true,
       [] { return std::make_unique<FidelitySuite>(); },
       check_fidelity,
       {}},
      {"output_length",
       OutputLengthSuite::kSummary,
       OutputLengthSuite::param_specs(),
       true,
       [] { return std::make_unique<OutputLengthSuite>(); },
       check_output_length,
       {}},
      {"accuracy",
       AccuracySuite::kSummary,
       AccuracySuite::param_specs(),
       true,
       [] { return std::make_unique<AccuracySuite>(); },
       check_accuracy,
       {}},
      {"serving", ServingSuite::kSummary, ServingSuite::param_specs(), true,
       [] { return std::make_unique<ServingSuite>(); }, check_serving_params, check_serving_method},
      {"predictor",
       PredictorSuite::kSummary,
       PredictorSuite::param_specs(),
       true,
       [] { return std::make_unique<PredictorSuite>(); },
       [](const nlohmann::json& p, const nlohmann::json&) { PredictorSuite::check_params(p); },
       {}},
  };
  return catalog;
}

std::vector<std::string> suite_names() {
  std::vector<std::string> names;
  for (const auto& s : suite_catalog()) names.push_back(s.name);
  return names;
}

const SuiteInfo& find_suite(const std::string& name) {
  const auto& catalog = suite_catalog();
  auto it = std::find_if(catalog.begin(), catalog.end(),
                         [&](const SuiteInfo& s) { return s.name == name; });
  if (it != catalog.end()) return *it;
  std::string hint = closest_match(name, suite_names());
  throw Error("unknown suite '" + key_text(name) + "'" +
              (hint.empty() ? "" : " (did you mean '" + hint + "'?)") +
              "; known suites: " + join(suite_names(), ", "));
}

namespace {

void check_input_paths(const nlohmann::json& params, const std::string& path) {
  for (const InputPath& in : input_paths(params)) {
    const std::string& key = in.key;
    const bool dir = in.is_dir;
    const std::filesystem::path p = in.path;
    std::error_code ec;
    // A file is anything readable but a directory: pipes and /dev/stdin included.
    const bool ok = dir ? std::filesystem::is_directory(p, ec)
                        : std::filesystem::exists(p, ec) && !std::filesystem::is_directory(p, ec);
    if (ok) continue;
    const bool exists = std::filesystem::exists(p, ec);
    throw ConfigError(join_path(path, key),
                      std::string(exists ? (dir ? "not a directory: '" : "not a file: '")
                                         : (dir ? "no such directory: '" : "no such file: '")) +
                          p.string() + "'" +
                          (p.is_relative() ? " (relative to the working directory, " +
                                                 std::filesystem::current_path(ec).string() + ")"
                                           : ""));
  }
}

// `given_entry`: `entry` is what a config wrote, not a report's resolved cell.
nlohmann::json resolve_suite_entry(const nlohmann::json& entry, const std::string& path,
                                   bool check_files, bool given_entry) {
  if (!entry.is_object()) {
    throw ConfigError(
        path, "expected an object like {\"name\": \"kernels\"}, got " + json_type_name(entry));
  }
  if (!entry.contains("name") || !entry["name"].is_string()) {
    throw ConfigError(join_path(path, "name"),
                      "expected a suite name (string); known suites: " + join(suite_names(), ", "));
  }
  const SuiteInfo* info = nullptr;
  try {
    info = &find_suite(entry["name"]);
  } catch (const Error& e) {
    throw ConfigError(join_path(path, "name"), e.what());
  }
  nlohmann::json resolved = resolve_params(entry, info->params, path);
  if (info->check) {
    try {
      info->check(resolved, given_entry ? entry : nlohmann::json());
    } catch (const ConfigError& e) {
      // "config: <key>: <problem>" again, with the key under this suite's path.
      const std::string prefix = "config: " + e.key_path() + ": ", what = e.what();
      throw ConfigError(join_path(path, e.key_path()),
                        what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what);
    } catch (const Error& e) {
      throw ConfigError(path, e.what());
    }
  }
  if (check_files) check_input_paths(resolved, path);
  return resolved;
}

}  // namespace

nlohmann::json resolve_suite(const nlohmann::json& entry, const std::string& path) {
  return resolve_suite_entry(entry, path, /*check_files=*/true, /*given_entry=*/true);
}

nlohmann::json resolve_cell_parts(const nlohmann::json& cell) {
  nlohmann::json entry = cell.value("params", nlohmann::json::object());
  entry["name"] = cell.value("suite", "");
  // A report's data files need not exist where it is compared.
  nlohmann::json params =
      resolve_suite_entry(entry, "params", /*check_files=*/false, /*given_entry=*/false);
  params.erase("name");
  return {{"method", resolve_method(cell.at("method"), "method")}, {"params", params}};
}

}  // namespace kvbench
