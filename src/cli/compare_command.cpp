#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/core/table.h"
#include "kvbench/core/text.h"
#include "kvbench/report/compare.h"
#include "kvbench/report/report_reader.h"
#include "kvbench/report/table_render.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {
namespace {

struct CompareCliOptions {
  std::string baseline;
  std::string candidate;
  std::vector<std::string> thresholds;
  uint64_t seed = 0;
};

std::string percent(double x) {
  if (!std::isfinite(x)) return x > 0 ? "+inf%" : "-inf%";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.1f%%", 100 * x);
  return buf;
}

std::string result_word(const MetricComparison& c) {
  return c.regressed ? "REGRESSED" : c.improved ? "improved" : "ok";
}

std::string metrics_help() {
  std::string text =
      "METRIC=PCT: regression threshold in percent of the baseline (or METRIC=off); "
      "repeatable. Metrics and defaults:";
  std::vector<std::string> seen;
  for (const CompareMetric& m : compare_metrics()) {
    if (std::find(seen.begin(), seen.end(), m.name) != seen.end()) continue;
    seen.push_back(m.name);
    text += " " + m.name + "=" + format_value(m.default_pct);
  }
  return text;
}

// The distinct suites of a report's ok cells, in order of first appearance.
std::vector<std::string> suites_of(const nlohmann::json& report) {
  std::vector<std::string> out;
  for (const auto& c : report["cells"]) {
    const std::string s = c.value("suite", "");
    if (c.value("status", "") == "ok" && std::find(out.begin(), out.end(), s) == out.end())
      out.push_back(s);
  }
  return out;
}

// "tpot (latency)", ... for every metric with a threshold.
std::vector<std::string> checked_metrics(const CompareOptions& options) {
  std::vector<std::string> out;
  for (const CompareMetric& m : compare_metrics())
    if (options.thresholds.count(m.name)) out.push_back(m.name + " (" + m.suite + ")");
  return out;
}

// The reports a side names: the file itself, or every *.json under a directory (searched
// recursively, in path order; symlinked directories are not entered, and two links to one file
// are one run): repeated runs of one config. Throws Error when a directory holds none or cannot
// be listed.
std::vector<LoadedReport> load_side(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return {load_report(path)};
  std::map<std::string, std::string> files;  // as shown -> canonical, in path order
  fs::recursive_directory_iterator it(path, ec), end;
  std::string last = path;
  for (; !ec && it != end; it.increment(ec)) {
    last = it->path().string();
    std::error_code entry;  // a dangling link is skipped, not the listing's error
    if (it->path().extension() != ".json" || !it->is_regular_file(entry)) continue;
    const fs::path canonical = fs::weakly_canonical(it->path(), entry);
    files[last] = entry ? last : canonical.string();
  }
  KVB_CHECK(!ec, path, ": cannot list the directory (at ", last, "): ", ec.message());
  KVB_CHECK(!files.empty(), path,
            ": is a directory with no report (*.json) in it; expected a report file or a "
            "directory of repeated runs");
  std::vector<LoadedReport> out;
  std::set<std::string> seen;  // the first path in order names a file reached by several
  for (const auto& [shown, canonical] : files)
    if (seen.insert(canonical).second) out.push_back(load_report(shown));
  return out;
}

// "a.json, b.json" for a side's reports, in the order compare counts them.
std::string list_sources(const std::vector<LoadedReport>& side) {
  std::vector<std::string> names;
  for (const LoadedReport& r : side) names.push_back(r.source);
  return join(names, ", ");
}

// The side's documents, moved out of its reports (which keep their sources).
std::vector<nlohmann::json> take_docs(std::vector<LoadedReport>& side) {
  std::vector<nlohmann::json> out;
  for (LoadedReport& r : side) out.push_back(std::move(r.doc));
  return out;
}

std::vector<std::string> sources_of(const std::vector<LoadedReport>& a,
                                    const std::vector<LoadedReport>& b) {
  std::vector<std::string> out;
  for (const auto* side : {&a, &b})
    for (const LoadedReport& r : *side) out.push_back(r.source);
  return out;
}

// "results/ci-base", or "results/ci-base (3 runs)".
std::string side_name(const std::string& path, size_t runs) {
  return runs > 1 ? path + " (" + std::to_string(runs) + " runs)" : path;
}

int compare(const CompareCliOptions& opt) {
  std::vector<LoadedReport> base, cand;
  CompareOptions options;
  try {  // unreadable files, wrong schema and bad thresholds are input errors: exit 2
    options.thresholds = parse_thresholds(opt.thresholds);
    options.canonical = resolve_cell_parts;
    base = load_side(opt.baseline);
    cand = load_side(opt.candidate);
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const nlohmann::json::exception& e) {  // a header field of the wrong type
    spdlog::error("{}", malformed_report_message(e, {opt.baseline, opt.candidate}));
    return 2;
  }
  // A partial report is a run that stopped: its missing cells would pass as "not compared".
  for (const auto* side : {&base, &cand}) {
    for (const LoadedReport& r : *side) {
      if (!r.doc.contains("partial")) continue;
      const nlohmann::json& p = r.doc["partial"];
      spdlog::error(
          "{} is a partial report ({} of {} cells): its run did not finish; finish it "
          "with run --resume before comparing",
          r.source, p.value("cells_done", 0), p.value("cells_planned", 0));
      return 2;
    }
  }
  options.seed = opt.seed;
  const std::vector<nlohmann::json> base_docs = take_docs(base), cand_docs = take_docs(cand);
  CompareResult result;
  try {
    result = compare_runs(base_docs, cand_docs, options);
  } catch (const Error& e) {  // the runs of a side are not of one config
    spdlog::error("{} -> {}: {} (baseline reports: {}; new reports: {})", opt.baseline,
                  opt.candidate, e.what(), list_sources(base), list_sources(cand));
    return 2;
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong type
    spdlog::error("{}", malformed_report_message(e, sources_of(base, cand)));
    return 2;
  }
  for (const std::string& n : result.notes) spdlog::warn("{}", n);

  Table t;
  t.columns = {"cell",   "metric", "point",     "baseline", "new",
               "change", "95% CI", "threshold", "result"};
  for (const MetricComparison& c : result.comparisons) {
    t.rows.push_back({c.cell, c.metric, c.point, format_value(c.baseline),
                      format_value(c.candidate), percent(c.change),
                      c.timing ? percent(c.change_ci.low) + " .. " + percent(c.change_ci.high)
                               : std::string("(point value)"),
                      format_value(c.threshold_pct) + "%", result_word(c)});
  }
  std::cout << "compare " << side_name(opt.baseline, base.size()) << " -> "
            << side_name(opt.candidate, cand.size()) << ": " << result.comparisons.size()
            << " comparison(s)\n\n";
  if (!t.rows.empty()) print_table(std::cout, t);

  const size_t n = result.regressions();
  std::cout << "\n";
  if (n == 0 && result.comparisons.empty()) {
    // A gate that judged nothing must not pass (no shared cells, or suites with no metric).
    size_t ok = 0, cells = 0;
    for (const auto& c : base_docs[0]["cells"]) ++cells, ok += c.value("status", "") == "ok";
    if (cells == 0) {
      std::cout << "nothing compared: the baseline has no cells\n";
    } else if (ok == 0) {
      std::cout << "nothing compared: no cell of the baseline is ok (" << cells
                << " cell(s), all failed); fix the baseline run first\n";
    } else if (options.thresholds.empty()) {
      std::cout << "nothing compared: every metric is off (--threshold METRIC=off)\n";
    } else {
      std::cout << "nothing compared: none of the baseline's " << ok
                << " ok cell(s) has a metric this compare checks (its suites: "
                << join(suites_of(base_docs[0]), ", ")
                << "; metrics checked: " << join(checked_metrics(options), ", ") << ")"
                << (result.notes.empty() ? "" : "; see the warnings above") << "\n";
    }
    return 1;
  }
  if (n == 0) {
    std::cout << "no regression beyond the thresholds\n";
    return 0;
  }
  std::cout << n << " regression(s):\n";
  // A red job on a busy runner: say so beside the verdict, not only in the log's warnings.
  const std::string busy = busy_machine_note(base_docs, cand_docs);
  const bool timing_regressed =
      std::any_of(result.comparisons.begin(), result.comparisons.end(),
                  [](const MetricComparison& c) { return c.regressed && c.timing; });
  if (timing_regressed && !busy.empty()) std::cout << "  note: " << busy << "\n";
  for (const std::string& f : result.newly_failed) {
    std::cout << "  failed now (ok in the baseline): " << f << "\n";
  }
  for (const std::string& id : result.missing) {
    std::cout << "  missing now (ok in the baseline): " << id << "\n";
  }
  for (const MetricComparison& c : result.comparisons) {
    if (!c.regressed) continue;
    std::cout << "  " << c.metric << " " << c.cell << (c.point.empty() ? "" : " " + c.point) << ": "
              << format_value(c.baseline) << " -> " << format_value(c.candidate) << " ("
              << percent(c.change);
    if (c.timing) {
      std::cout << ", 95% CI " << percent(c.change_ci.low) << " .. " << percent(c.change_ci.high);
    }
    std::cout << "), threshold " << format_value(c.threshold_pct) << "%\n";
  }
  return 1;
}

}  // namespace

void register_compare_command(CLI::App& app, GlobalOptions& global) {
  auto opt = std::make_shared<CompareCliOptions>();
  CLI::App* sub = app.add_subcommand(
      "compare",
      "compare two reports (or two directories of repeated runs) cell by cell; exit 1 when a "
      "metric regressed beyond its threshold (timings: the whole 95% bootstrap interval of the "
      "change of medians)");
  sub->add_option("baseline", opt->baseline,
                  "the reference report, or a directory of repeated runs of one config (every "
                  "*.json under it)")
      ->required();
  sub->add_option("new", opt->candidate, "the report to check, or a directory of repeated runs")
      ->required();
  sub->add_option("--threshold", opt->thresholds, metrics_help())->allow_extra_args(false);
  sub->add_option("--seed", opt->seed, "seed of the bootstrap resampling")
      ->capture_default_str()
      ->check(integer_option(0, UINT64_MAX));
  sub->callback([opt, &global] { global.action = [opt] { return compare(*opt); }; });
}

}  // namespace kvbench
