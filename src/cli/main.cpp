// kvbench: benchmark harness for KV-cache compression methods. Exit codes: 0 success,
// 1 runtime error or failed cells, 2 configuration or usage error.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/core/logging.h"
#include "kvbench/core/text.h"

namespace {

std::vector<std::string> command_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names.push_back(sub->get_name());
  return names;
}

// CLI11 says only "A subcommand is required" for a misspelt or missing command.
std::string unknown_command_message(const std::vector<std::string>& names,
                                    const std::string& word) {
  std::string msg = "kvbench: unknown command '" + word + "'";
  const std::string hint = kvbench::closest_match(word, names);
  if (!hint.empty()) msg += " (did you mean '" + hint + "'?)";
  msg += "; commands: " + kvbench::join(names, ", ");
  if (word == "figures" || word == "figure" || word == "plot")
    msg +=
        ". Figures are drawn by scripts/figures.py REPORT.json... --out DIR (Python, matplotlib)";
  return msg + ". Run 'kvbench --help' for more.";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvbench;
  setup_logging("info");  // logs go to stderr even for errors raised before options are read
  CLI::App app{"kvbench: what does a KV-cache compression method really buy in LLM serving?"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level is accepted after the subcommand too
  GlobalOptions global;
  for (int i = 0; i < argc; ++i) global.command_line += (i ? " " : "") + std::string(argv[i]);
  app.add_option("--log-level", global.log_level,
                 "trace, debug, info, warn, error or off (logs go to stderr)")
      ->capture_default_str()
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  register_run_command(app, global);
  register_validate_command(app, global);
  register_list_command(app, global);
  register_make_model_command(app, global);
  register_tokenize_command(app, global);
  register_version_command(app, global);
  register_report_command(app, global);
  register_compare_command(app, global);
  register_train_command(app, global);
  // The first word that is neither an option nor --log-level's value names the command.
  int first = 1;
  while (first < argc && argv[first][0] == '-')
    first += std::string(argv[first]) == "--log-level" ? 2 : 1;
  const std::vector<std::string> names = command_names(app);
  if (first < argc && std::find(names.begin(), names.end(), argv[first]) == names.end()) {
    std::cerr << unknown_command_message(names, argv[first]) << "\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    setup_logging(global.log_level);
    return global.action ? global.action() : 0;
  } catch (const ConfigError& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    if (!e.where().empty()) spdlog::debug("raised at {}", e.where());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
