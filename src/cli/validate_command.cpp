#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/cli/config_loader.h"
#include "kvbench/cli/summary_table.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/suite_registry.h"
#include "kvbench/suites/workload.h"

namespace kvbench {
namespace {

// What only the model's shape can tell (a Palu group that does not divide its KV heads, a
// rank above head_dim, a group that does not divide head_dim), refused here as --dry-run does,
// when the model's config can be read: a checkpoint that is not there yet is the run's to
// report.
void check_methods_fit_model(const RunSpec& spec, const std::vector<Cell>& cells) {
  ModelProvider model(spec.model);
  const ModelConfig* config = nullptr;
  at::ScalarType kv_dtype = at::kFloat;
  try {
    config = model.config_only();
    if (config) kv_dtype = model.kv_dtype();
  } catch (const Error&) {
    return;
  }
  if (!config) return;
  for (const Cell& c : cells) {
    if (!find_suite(c.suite).needs_model) continue;
    try {
      method_kv_bytes_per_token(c.method, *config, kv_dtype, spec.attention == "paged",
                                spec.device == "cuda");
    } catch (const Error& e) {
      throw ConfigError("methods[" + std::to_string(c.method_index) + "]",
                        std::string(e.what()) + " (the model of this config)");
    }
  }
}

}  // namespace

void register_validate_command(CLI::App& app, GlobalOptions& global) {
  struct Options {
    std::string config;
    std::vector<std::string> sets;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("validate", "check a config and list its cells; runs nothing");
  sub->add_option("-c,--config", opt->config, "run configuration (JSON)")->required();
  sub->add_option("--set", opt->sets, "override a config key (repeatable)")
      ->allow_extra_args(false);
  sub->callback([opt, &global] {
    global.action = [opt] {
      const std::vector<GridRun> runs = load_run_specs(opt->config, opt->sets);
      for (const GridRun& g : runs) {
        check_device(g.spec, query_cuda());
        auto cells = expand_cells(g.spec);
        check_methods_fit_model(g.spec, cells);
        std::cout << opt->config
                  << (runs.size() > 1 ? " (run " + g.spec.name + ", grid " + g.point.dump() + ")"
                                      : "")
                  << ": valid, " << cells.size() << " cell(s)\n";
        print_cell_plan(std::cout, cells);
      }
      return 0;
    };
  });
}

}  // namespace kvbench
