// One register_<command>_command per subcommand file (micromamba style). Each registers its
// options on `app` and, when its subcommand is parsed, stores the work to do in
// `global.action`; main runs it after logging is set up. Actions return the exit code and
// throw on errors (main logs them: ConfigError exits 2, other errors 1).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
class Validator;
}  // namespace CLI

namespace kvbench {

struct RunSpec;
struct Cell;

struct GlobalOptions {
  std::string log_level = "info";
  std::string command_line;  // argv joined, recorded in reports
  std::function<int()> action;
};

// For integer options (--seed, --threads, --until): a plain decimal integer in [min, max].
// CLI11 alone reads "010" as octal 8 and "0x10" as 16, wraps a negative number into 2^64 - 1
// for an unsigned option and clamps one past 2^64 - 1 to it. `max_note` follows the maximum in
// its message (" (2^53 - 1, the largest model.seed)").
CLI::Validator integer_option(uint64_t min, uint64_t max, const std::string& max_note = "");
// What only the model's shape and dtype can tell (a Palu group that does not divide its KV
// heads; on attention "paged", a method or the fidelity baseline without a paged format, a
// policy its paged cache cannot run), refused as ConfigError naming the entry, when the model's
// config can be read (a checkpoint not there yet is the run's to report). validate and
// run --dry-run (defined in validate_command.cpp).
void check_methods_fit_model(const RunSpec& spec, const std::vector<Cell>& cells);

void register_run_command(CLI::App& app, GlobalOptions& global);
void register_validate_command(CLI::App& app, GlobalOptions& global);
void register_list_command(CLI::App& app, GlobalOptions& global);
void register_make_model_command(CLI::App& app, GlobalOptions& global);
void register_tokenize_command(CLI::App& app, GlobalOptions& global);
void register_version_command(CLI::App& app, GlobalOptions& global);
void register_report_command(CLI::App& app, GlobalOptions& global);
void register_compare_command(CLI::App& app, GlobalOptions& global);
void register_train_command(CLI::App& app, GlobalOptions& global);

}  // namespace kvbench
