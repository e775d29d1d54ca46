// kvbench: benchmark harness for KV-cache compression methods. Exit codes: 0 success,
// 1 runtime error or failed cells, 2 configuration or usage error.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <iostream>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/core/logging.h"

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
