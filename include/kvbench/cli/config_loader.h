// Loading a run configuration: read the JSON file (parse errors with line and column), apply
// `--set key=value` overrides, validate into a RunSpec.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/json_text.h"  // parse_json_text: configs are read with it
#include "kvbench/suites/run_spec.h"

namespace kvbench {

nlohmann::json read_config_file(const std::string& path);
// Applies one "dotted.key=value" override. The value is parsed as JSON; if that fails it is
// taken as a plain string (so --set model.path=/data/llama works unquoted). List elements are
// addressed by index: --set suites.0.repeats=5.
void apply_override(nlohmann::json& config, const std::string& assignment);
// read_config_file + overrides + parse_run_spec; the run is named after the file's stem.
// A config with a `grid` is an error here (use load_run_specs).
RunSpec load_run_spec(const std::string& path, const std::vector<std::string>& overrides);

// A config's top-level `grid` — {"dotted.key": [value, ...], ...}, the keys as --set takes
// them — expands into one run per combination (keys in sorted order, the last varying
// fastest), each named "<stem>-g<index>". The runs come ordered so that runs with the same
// `model` section are adjacent (a sweep loads each model once); without a grid, one run.
struct GridRun {
  RunSpec spec;
  nlohmann::json point;  // {"dotted.key": value} of this run; empty without a grid
};
std::vector<GridRun> load_run_specs(const std::string& path,
                                    const std::vector<std::string>& overrides);
// Runs `check` on one run of a sweep; a ConfigError it throws names the grid point (the value
// may come from the grid, not the file). Without a grid the error passes unchanged.
void check_grid_run(const GridRun& run, const std::function<void()>& check);

}  // namespace kvbench
