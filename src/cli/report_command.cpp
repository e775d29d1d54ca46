#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>
#include <set>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/report/report_merge.h"
#include "kvbench/report/report_reader.h"
#include "kvbench/report/report_tables.h"
#include "kvbench/report/table_render.h"

namespace kvbench {
namespace {

struct ReportOptions {
  std::vector<std::string> files;
  std::string format = "md";
  std::string baseline;
};

int report(const ReportOptions& opt) {
  MergedReports merged;
  ReportTables tables;
  try {  // unreadable or foreign files and an absent --baseline are input errors: exit 2
    std::vector<LoadedReport> reports;
    std::set<std::string> seen;  // a file named twice (a.json a.json, a shell glob and a name)
    for (const std::string& f : opt.files) {
      std::error_code ec;
      const std::filesystem::path canonical = std::filesystem::weakly_canonical(f, ec);
      if (!seen.insert(ec ? f : canonical.string()).second) {
        spdlog::warn("{}: given twice; read once", f);
        continue;
      }
      reports.push_back(load_report(f));
    }
    merged = merge_reports(reports);
    tables = build_report_tables(merged, opt.baseline);
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 2;
  } catch (const nlohmann::json::exception& e) {  // a field of the wrong type
    spdlog::error("{}", malformed_report_message(e, opt.files));
    return 2;
  }
  for (const std::string& w : merged.warnings) spdlog::warn("{}", w);
  if (opt.format != "md") {  // markdown carries the notes itself
    for (const std::string& n : tables.notes) spdlog::info("{}", n);
  }
  if (opt.format == "md") {
    render_markdown(std::cout, tables, merged.sources);
  } else if (opt.format == "csv") {
    render_csv(std::cout, tables);
  } else {
    // (File names from the command line need not be UTF-8: such bytes print as U+FFFD.)
    std::cout << render_json(tables, merged.sources, merged.warnings)
                     .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  }
  return 0;
}

}  // namespace

void register_report_command(CLI::App& app, GlobalOptions& global) {
  auto opt = std::make_shared<ReportOptions>();
  CLI::App* sub = app.add_subcommand(
      "report",
      "merge reports into tables: each suite's key metrics beside a baseline method with "
      "ratios, the Pareto front of the methods, and the failed cells");
  sub->add_option("files", opt->files,
                  "report files (schema_version 2); a cell id in a later file replaces the same "
                  "id in an earlier one")
      ->required();
  sub->add_option("--format", opt->format, "md (GitHub markdown), csv or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"md", "csv", "json"}));
  sub->add_option("--baseline", opt->baseline,
                  "method the ratios are taken against: a label as the tables print it "
                  "(kivi(bits=2), snapkv+palu) or a method name with one label (default: full, "
                  "when present)");
  sub->callback([opt, &global] { global.action = [opt] { return report(*opt); }; });
}

}  // namespace kvbench
