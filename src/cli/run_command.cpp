#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <set>
#include <string>

#include "kvbench/cli/commands.h"
#include "kvbench/cli/config_loader.h"
#include "kvbench/cli/progress_display.h"
#include "kvbench/cli/summary_table.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/core/time.h"
#include "kvbench/core/version.h"
#include "kvbench/report/atomic_file.h"
#include "kvbench/report/report.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/runner.h"

namespace kvbench {
namespace {

struct RunOptions {
  std::string config;
  std::string out;
  bool out_given = false;  // --out on the command line, even as ""
  std::vector<std::string> sets;
  bool dry_run = false;
  std::string shard;         // "i/n"
  bool shard_given = false;  // --shard on the command line, even as "" (an unset $SHARD)
  bool resume = false;
  std::string command_line;
};

// Whether the current run has a report on disk (a partial one, or the one --resume continues):
// what the stop message may promise. Lock-free, so the signal handler may read it.
std::atomic<bool> report_on_disk{false};
static_assert(std::atomic<bool>::is_always_lock_free);

// SIGINT / SIGTERM during a run: the report on disk already holds every finished cell (it is
// written after each), so say how to finish it, leave no half-written temporary file, and end
// with the signal's own status (130 / 143 in a shell). Only async-signal-safe calls.
void on_stop_signal(int sig) {
  // Once: a process-directed signal sent twice (GNU timeout signals the child, then its group)
  // can reach a second thread while the first runs this handler.
  static std::atomic_flag stopping = ATOMIC_FLAG_INIT;
  if (stopping.test_and_set()) return;
  // The flag is set as the first report is linked into place; the link count closes the
  // window between link() returning and that store (read before the temporary goes).
  const bool written = report_on_disk.load() || unfinished_atomic_write_placed();
  remove_unfinished_atomic_write();
  static const char kWritten[] =
      "\nkvbench: stopped by a signal; the report holds every cell finished before it: the same "
      "command with --resume runs the rest\n";
  static const char kNothing[] =
      "\nkvbench: stopped by a signal before a cell of this run finished; no report of it was "
      "written: the same command with --resume runs the rest\n";
  const char* message = written ? kWritten : kNothing;
  const size_t length = written ? sizeof(kWritten) - 1 : sizeof(kNothing) - 1;
  ssize_t unused = ::write(STDERR_FILENO, message, length);
  (void)unused;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM}) ::sigaction(sig, &action, nullptr);
}

void warn_about_environment(const Environment& env) {
  if (env.blas.reference) {
    spdlog::warn(
        "libtorch uses the reference BLAS ({}), 20-35x slower than OpenBLAS; "
        "run scripts/setup.sh (installs libopenblas0-openmp)",
        env.blas.library);
  }
  const std::string busy = busy_machine_warning(env);
  if (!busy.empty()) spdlog::warn("{}", busy);
}

// A dry run's missing output directory: its first missing component, under the nearest existing
// ancestor, is made and removed again (the one thing a dry run makes, for a moment), which is
// what the real run's create_directories needs (access() passes root where nothing can be made:
// /proc, a read-only mount).
void check_creatable(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  // The path as given (no lexical normalisation: the kernel resolves `link/..` through the link).
  fs::path first = dir;
  while (first.has_parent_path() && first.parent_path() != first &&
         !fs::exists(first.parent_path()))
    first = first.parent_path();
  const fs::path parent = first.has_parent_path() ? first.parent_path() : fs::path(".");
  if (!fs::is_directory(parent))
    throw ConfigError("output.dir", "cannot create '" + dir.string() + "': '" + parent.string() +
                                        "' is not a directory");
  if (::mkdir(first.c_str(), 0700) != 0) {
    // Made meanwhile by another run sharing it; not a dangling link or a file in the way.
    if (errno == EEXIST && fs::is_directory(first)) return;
    throw ConfigError("output.dir",
                      "cannot create '" + dir.string() + "': " + std::strerror(errno));
  }
  ::rmdir(first.c_str());
}

// The output directory must take the report before any cell runs (a sweep whose report cannot
// be written measures for nothing). A dry run checks what exists and probes what does not.
void check_output_dir(const RunSpec& spec, bool create) {
  const std::filesystem::path dir(spec.output_dir);
  std::error_code ec;
  if (create) std::filesystem::create_directories(dir, ec);
  if (ec) throw ConfigError("output.dir", "cannot create '" + dir.string() + "': " + ec.message());
  if (!std::filesystem::exists(dir)) {  // dry run: the real one creates it; can it?
    check_creatable(dir);
    return;
  }
  if (!std::filesystem::is_directory(dir))
    throw ConfigError("output.dir", "'" + dir.string() + "' exists and is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    throw ConfigError("output.dir",
                      "cannot write reports into '" + dir.string() + "': " + std::strerror(errno));
  if (!create) return;  // a dry run writes nothing
  // access() passes root everywhere, also where no file can be made (a read-only mount,
  // sysfs): a file made and removed again is the real test.
  // (A unique name: runs sharing the directory, or a pid in containers, never meet.)
  std::string probe = (dir / ".kvbench-probe.XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  if (fd < 0)
    throw ConfigError("output.dir",
                      "cannot write reports into '" + dir.string() + "': " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

// The cells of one run, after --shard.
std::vector<Cell> shard_cells(const RunSpec& spec, const RunOptions& opt) {
  std::vector<Cell> cells = expand_cells(spec);
  if (opt.shard_given) {
    const size_t all = cells.size();
    cells = select_shard(cells, parse_shard(opt.shard));
    spdlog::info("shard {}: {} of {} cell(s) of run '{}'", opt.shard, cells.size(), all, spec.name);
  }
  return cells;
}

int dry_run(const std::vector<GridRun>& runs, const RunOptions& opt) {
  for (const GridRun& g : runs) {
    set_thread_count(g.spec.threads);
    const Environment env = capture_environment();
    const std::vector<Cell> cells = shard_cells(g.spec, opt);
    check_grid_run(g, [&] { check_methods_fit_model(g.spec, cells); });
    ModelProvider model(g.spec.model);
    const auto estimates = estimate_cells(cells, model, env, g.spec.attention == "paged",
                                          g.spec.attention == "reference");
    if (runs.size() > 1)
      std::cout << "run " << g.spec.name << " (grid " << g.point.dump() << "):\n";
    print_cell_plan(std::cout, cells, estimates);
    const uint64_t available = plan_memory_bytes(g.spec, env);
    std::cout << "available memory: " << format_bytes(double(available))
              << (g.spec.device == "cuda" ? " (GPU)" : "") << "\n";
    refuse_oversized_plan(cells, estimates, available);
    spdlog::info("dry run: {} cell(s) fit; nothing executed, no report written", cells.size());
  }
  return 0;
}

// Runs one (grid) run's cells and writes its report; returns its failed-cell count.
size_t run_one(const RunSpec& spec, const RunOptions& opt, ModelProvider& model) {
  set_thread_count(spec.threads);
  report_on_disk = false;
  const std::vector<Cell> cells = shard_cells(spec, opt);
  const Environment env = capture_environment();
  warn_about_environment(env);
  RunInfo info{now_rfc3339(), "", opt.command_line, opt.config, nlohmann::json::object()};
  const std::string stamp = now_compact_utc();
  spdlog::info("run '{}': {} cell(s), {} thread(s), BLAS {}", spec.name, cells.size(), env.threads,
               env.blas.name);

  // --resume: ok cells of earlier reports in the output directory are reused, not re-run.
  const auto previous =
      opt.resume ? previous_ok_cells(spec.output_dir) : std::map<std::string, nlohmann::json>{};
  std::vector<Cell> to_run;
  for (const auto& c : cells)
    if (!previous.count(resume_key(c.id, c.seed))) to_run.push_back(c);
  if (opt.resume) {
    spdlog::info("resume: {} cell(s) already done, {} to run", cells.size() - to_run.size(),
                 to_run.size());
    std::set<std::string> builds;
    size_t other = 0;
    for (const auto& c : cells) {
      auto it = previous.find(resume_key(c.id, c.seed));
      if (it == previous.end()) continue;
      const nlohmann::json by = it->second.value("measured_by", nlohmann::json());
      if (by == nlohmann::json(git_revision())) continue;
      ++other;
      builds.insert(by.is_string() ? by.get<std::string>() : "of an unknown revision");
    }
    if (other > 0) {
      std::string names;
      for (const std::string& b : builds) names += (names.empty() ? "" : ", ") + b;
      spdlog::warn(
          "resume: {} reused cell(s) were measured by kvbench {}, not by this build ({}): their "
          "numbers are that build's (each names it in measured_by); run without --resume to "
          "measure them again",
          other, names, git_revision());
    }
  }

  // Claimed by the first write (a new name, exclusively); later writes replace it. A resumed
  // run continues this run's report (partial, or finished with failed cells to run again) and
  // keeps its start time.
  std::filesystem::path path;
  if (opt.resume) {
    std::vector<std::string> ids;
    for (const auto& c : cells) ids.push_back(c.id);
    const ContinuedReport continued = report_to_continue(spec.output_dir, spec.resolved, ids);
    path = continued.path;
    report_on_disk = !path.empty();
    if (!path.empty()) {
      spdlog::info("resume: continuing {}", path.string());
      if (!continued.created.empty()) info.created = continued.created;
      if (!continued.partial && continued.all_ok && to_run.empty()) {
        // Nothing failed or missing: the finished report stays as it is. (One with a failed
        // cell that another report has ok is rewritten with that cell.)
        std::cout << "nothing to run: every cell is ok in " << path.string() << "\n";
        std::cout << "report: " << path.string() << "\n";
        return 0;
      }
    }
  }
  auto write = [&](const nlohmann::json& report) {
    // Set as the file is placed, not after the call: a stop in between must not say that no
    // report was written.
    if (path.empty())
      path = write_new_report(report, spec, stamp, &report_on_disk);
    else
      write_report(report, path);
    report_on_disk = true;
  };
  // The report of the cells so far: reused ones and those run, in plan order.
  auto cells_json = [&](const std::vector<CellResult>& done) {
    nlohmann::json out = nlohmann::json::array();
    for (size_t i = 0, r = 0; i < cells.size(); ++i) {
      auto it = previous.find(resume_key(cells[i].id, cells[i].seed));
      if (it != previous.end())
        out.push_back(it->second);
      else if (r < done.size())
        out.push_back(cell_to_json(done[r++]));
    }
    return out;
  };
  // After every cell but the last, a partial report (written atomically, like the final one):
  // a run killed or timed out keeps what it measured, and --resume goes on from there. A
  // failed write (a full disk) costs the checkpoint, not the run: the final write still tries.
  auto write_partial = [&](const std::vector<CellResult>& done) {
    if (done.size() == to_run.size()) return;
    info.finished = now_rfc3339();
    info.model = model.identity();
    nlohmann::json report = build_report(spec, env, cells_json(done), info);
    report["partial"] = {{"cells_done", report["cells"].size()}, {"cells_planned", cells.size()}};
    try {
      write(report);
    } catch (const std::exception& e) {
      spdlog::warn("partial report not written: {}", e.what());
    }
  };

  ProgressDisplay progress(std::cerr, stderr_is_tty());
  const std::vector<CellResult> results =
      Runner().run(spec, to_run, env, progress, model, write_partial);
  info.finished = now_rfc3339();
  info.model = model.identity();
  write(build_report(spec, env, cells_json(results), info));

  print_run_summary(std::cout, results);
  const size_t failed = count_failed(results);
  const size_t reused = cells.size() - to_run.size();
  std::cout << "\n"
            << results.size() - failed << " of " << results.size() << " cell(s) ok"
            << (failed ? ", " + std::to_string(failed) + " failed" : "")
            << (reused
                    ? " (run now), " + std::to_string(reused) + " reused from earlier reports; " +
                          std::to_string(cells.size()) + " in the report"
                    : "")
            << "\n";
  std::cout << "report: " << path.string() << "\n";
  return failed;
}

int run(const RunOptions& opt) {
  std::vector<std::string> sets = opt.sets;
  // (An empty --out, e.g. from an unset shell variable, is an error: output.dir "" is one.)
  if (opt.out_given) {
    if (!is_valid_utf8(opt.out))
      throw ConfigError("output.dir",
                        "--out " + printable_utf8(opt.out) + ": not valid UTF-8 text");
    sets.push_back("output.dir=" + nlohmann::json(opt.out).dump());
  }
  const std::vector<GridRun> runs = load_run_specs(opt.config, sets);
  // A bad --shard fails before anything runs; "" too (a job array's unset $SHARD would
  // otherwise run every cell in every task).
  if (opt.shard_given) parse_shard(opt.shard);
  // Every run is checked in full (a grid's later runs too: identical cells, a method a suite
  // refuses) before any output directory is made or anything measured.
  for (const GridRun& g : runs) {
    check_grid_run(g, [&] {
      check_device(g.spec, query_cuda());
      (void)expand_cells(g.spec);
    });
  }
  for (const GridRun& g : runs) check_grid_run(g, [&] { check_output_dir(g.spec, !opt.dry_run); });
  if (opt.dry_run) return dry_run(runs, opt);
  install_stop_handlers();

  // Runs come ordered by model: one provider serves every run of the same model section, so
  // a sweep loads each model once.
  std::unique_ptr<ModelProvider> model;
  std::string model_key;
  size_t failed = 0;
  for (const GridRun& g : runs) {
    // The model is placed on its run's device: runs on another device load it again.
    const std::string key =
        g.spec.device + "|" + g.spec.resolved.value("model", nlohmann::json()).dump();
    if (!model || key != model_key)
      model = std::make_unique<ModelProvider>(g.spec.model), model_key = key;
    if (runs.size() > 1)
      std::cout << "\n== grid run " << g.spec.name << ": " << g.point.dump() << "\n";
    failed += run_one(g.spec, opt, *model);
  }
  return failed ? 1 : 0;
}

}  // namespace

void register_run_command(CLI::App& app, GlobalOptions& global) {
  auto opt = std::make_shared<RunOptions>();
  CLI::App* sub = app.add_subcommand("run", "run every cell of a config and write a JSON report");
  sub->add_option("-c,--config", opt->config, "run configuration (JSON)")->required();
  CLI::Option* out =
      sub->add_option("-o,--out", opt->out, "report directory (overrides output.dir)");
  sub->add_option("--set", opt->sets, "override a config key: --set threads=2 (repeatable)")
      ->allow_extra_args(false);
  sub->add_flag("--dry-run", opt->dry_run, "validate and list the cells without running them");
  CLI::Option* shard = sub->add_option(
      "--shard", opt->shard,
      "run only part i of n of the cells (0 <= i < n; by cell id, so the n parts are "
      "disjoint and complete); merge the reports with kvbench report");
  sub->add_flag("--resume", opt->resume,
                "reuse the ok cells of earlier reports in the output directory (same cell id) "
                "instead of running them again; failed cells run again");
  sub->callback([opt, out, shard, &global] {
    opt->command_line = global.command_line;
    opt->out_given = out->count() > 0;
    opt->shard_given = shard->count() > 0;
    global.action = [opt] { return run(*opt); };
  });
}

}  // namespace kvbench
