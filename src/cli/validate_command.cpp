#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/cli/config_loader.h"
#include "kvbench/cli/summary_table.h"
#include "kvbench/core/environment.h"
#include "kvbench/suites/cell.h"

namespace kvbench {

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
