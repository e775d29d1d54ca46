#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/suite_registry.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {
namespace {

void print_params(std::ostream& os, const std::vector<ParamSpec>& params) {
  if (params.empty()) os << "    (no parameters)\n";
  for (const auto& p : params) {
    os << "    " << p.name << ": " << describe_expected(p) << ", default " << p.default_value.dump()
       << "\n        " << p.help << "\n";
  }
}

void print_methods(std::ostream& os) {
  os << "methods:\n";
  for (const auto& m : method_catalog()) {
    os << "  " << m.name << " - " << m.summary << "\n";
    print_params(os, m.params);
  }
}

void print_suites(std::ostream& os) {
  os << "suites:\n";
  for (const auto& s : suite_catalog()) {
    os << "  " << s.name << " - " << s.summary << "\n";
    print_params(os, s.params);
  }
}

// The synthetic tasks the accuracy suite's `task` takes (docs/workloads.md).
void print_tasks(std::ostream& os) {
  os << "tasks:\n";
  for (const auto& t : task_names()) {
    os << "  " << t << "\n";
    print_params(os, task_param_specs(t));
  }
}

}  // namespace

void register_list_command(CLI::App& app, GlobalOptions& global) {
  auto what = std::make_shared<std::string>("all");
  CLI::App* sub =
      app.add_subcommand("list", "list methods, suites and synthetic tasks with their parameters");
  sub->add_option("what", *what, "methods, suites, tasks or all")
      ->check(CLI::IsMember({"methods", "suites", "tasks", "all"}))
      ->capture_default_str();
  sub->callback([what, &global] {
    global.action = [what] {
      const bool all = *what == "all";
      if (all || *what == "methods") print_methods(std::cout);
      if (all) std::cout << "\n";
      if (all || *what == "suites") print_suites(std::cout);
      if (all) std::cout << "\n";
      if (all || *what == "tasks") print_tasks(std::cout);
      return 0;
    };
  });
}

}  // namespace kvbench
