// The run report: one JSON document per run (schema in docs/report-schema.md and
// docs/report.schema.json). Built here from the run's results; written atomically.
#pragma once

#include <atomic>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/environment.h"
#include "kvbench/suites/runner.h"

namespace kvbench {

constexpr const char* kReportSchemaId = "kvbench.report";
constexpr int kReportSchemaVersion = 2;

struct RunInfo {
  std::string created;      // RFC 3339, when the run started
  std::string finished;     // RFC 3339
  std::string command;      // the command line, as typed
  std::string config_path;  // the config file as given
  nlohmann::json model;     // ModelProvider::identity(); empty object when no model was loaded
};

nlohmann::json cell_to_json(const CellResult& result);
nlohmann::json build_report(const RunSpec& spec, const Environment& env,
                            const std::vector<CellResult>& results, const RunInfo& info);
// The same from cells already in JSON form (`run --resume` mixes reused and new ones).
nlohmann::json build_report(const RunSpec& spec, const Environment& env,
                            const nlohmann::json& cells, const RunInfo& info);
// The key under which --resume finds a planned cell among earlier ones: its id and its seed. The
// run's seed changes a cell's inputs (prompts, sampling) but not its id, which stays comparable
// across seeds; a cell measured with another seed is not this cell's result.
std::string resume_key(const std::string& id, uint64_t seed);
// The ok cells of every kvbench report (schema_version 2) in `dir`, by resume_key, each marked
// "resumed_from": its file. Files are read in name order, so a later stamp wins; other or
// unreadable JSON files are skipped with a warning, and cells without an unsigned seed are not
// reused. Cell ids include fingerprints of the model and data files, so a changed input is never
// reused.
std::map<std::string, nlohmann::json> previous_ok_cells(const std::filesystem::path& dir);
// The report in `dir` that a resumed run continues: one written by a run of the same resolved
// config that planned exactly `ids` (so not another shard's), partial (it stopped) or finished
// (its failed cells run again); the latest by name, or an empty path. Continuing it, instead of
// writing a second file, keeps one report per run in the directory (what
// `compare DIR_A/*.json DIR_B/*.json` expects). `created`: its start time, which the
// continued report keeps.
struct ContinuedReport {
  std::filesystem::path path;
  std::string created;
  bool partial = false;
  bool all_ok = false;  // every cell it holds is ok
};
ContinuedReport report_to_continue(const std::filesystem::path& dir,
                                   const nlohmann::json& resolved_config,
                                   const std::vector<std::string>& ids);
// <output_dir>/<run name>-<UTC stamp>.json, or -2, -3, ... after it for `attempt` 2, 3, ...
std::filesystem::path report_path(const RunSpec& spec, const std::string& compact_stamp,
                                  int attempt = 1);
// Writes a new report under the first of report_path's names that no file has, claimed
// atomically (two runs started in the same second, e.g. shards of one config, never share a
// file); returns it. `placed` as for write_file_atomically.
std::filesystem::path write_new_report(const nlohmann::json& report, const RunSpec& spec,
                                       const std::string& compact_stamp,
                                       std::atomic<bool>* placed = nullptr);
// Replaces the report at `path` atomically.
void write_report(const nlohmann::json& report, const std::filesystem::path& path);

}  // namespace kvbench
