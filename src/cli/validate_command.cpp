#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/cli/config_loader.h"
#include "kvbench/cli/summary_table.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/suite_registry.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

void check_methods_fit_model(const RunSpec& spec, const std::vector<Cell>& cells) {
  // A kernels-only run reads no model: its model section is not checked here.
  if (std::none_of(cells.begin(), cells.end(),
                   [](const Cell& c) { return find_suite(c.suite).needs_model; }))
    return;
  ModelProvider model(spec.model);
  const ModelConfig* config = nullptr;
  at::ScalarType kv_dtype = at::kFloat;
  try {
    config = model.config_only();
    if (config) kv_dtype = model.kv_dtype();
  } catch (const ConfigError&) {
    throw;  // the config's own mistake (a checkpoint written for another preset)
  } catch (const Error& e) {
    // An unreadable checkpoint fails its cells at run time, with the loader's message; the
    // config itself may still be right, so this is a warning.
    spdlog::warn(
        "the methods were not checked against the model, which cannot be read "
        "({}); its cells will fail",
        e.what());
    return;
  }
  if (!config) return;
  const bool paged = spec.attention == "paged";
  // The GPU path's checks: on a GPU, or on the CPU with KVBENCH_PAGED_PATH=kernels.
  const bool kernel_path = spec.device == "cuda" || paged_kernel_path_on_cpu();
  for (const Cell& c : cells) {
    if (!find_suite(c.suite).needs_model) continue;
    try {
      method_kv_bytes_per_token(c.method, *config, kv_dtype, paged, spec.device == "cuda");
      if (paged)
        check_paged_method(c.method, config->num_heads, config->num_kv_heads, config->head_dim,
                           kv_dtype, kernel_path);
    } catch (const Error& e) {
      throw ConfigError("methods[" + std::to_string(c.method_index) + "]",
                        std::string(e.what()) + " (the model of this config)");
    }
    // These suites measure against the full cache on the same backend (make_baseline_cache).
    const bool baseline =
        c.suite == "fidelity" || c.suite == "accuracy" || c.suite == "output_length";
    if (paged && baseline) {
      try {
        check_paged_method(resolve_method({{"name", "full"}}, "baseline"), config->num_heads,
                           config->num_kv_heads, config->head_dim, kv_dtype, kernel_path);
      } catch (const Error& e) {
        throw ConfigError(
            "suites[" + std::to_string(c.suite_index) + "]",
            c.suite + ": its full-cache baseline: " + e.what() + " (the model of this config)");
      }
    }
  }
}

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
        std::vector<Cell> cells;
        check_grid_run(g, [&] {
          check_device(g.spec, query_cuda());
          cells = expand_cells(g.spec);
          check_methods_fit_model(g.spec, cells);
        });
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
