#include "kvbench/report/report.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/machine_probe.h"
#include "kvbench/core/text.h"
#include "kvbench/core/version.h"
#include "kvbench/report/atomic_file.h"
#include "kvbench/report/report_reader.h"

namespace kvbench {
namespace {

// The report as JSON text. Strings from outside (prompts and outputs read from files, paths,
// --set values) may hold bytes that are not UTF-8, which JSON cannot: each such byte becomes
// U+FFFD instead of costing the whole report.
std::string report_text(const nlohmann::json& report) {
  return report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

nlohmann::json cell_to_json(const CellResult& r) {
  nlohmann::json j = {{"id", r.cell.id},
                      {"suite", r.cell.suite},
                      {"method", r.cell.method},
                      {"params", r.cell.params},
                      {"seed", r.cell.seed},
                      {"status", r.ok ? "ok" : "failed"},
                      {"started", r.started},
                      {"duration_s", r.duration_s},
                      {"peak_rss_bytes", r.peak_rss_bytes},
                      {"peak_rss_reset", r.peak_rss_reset},
                      {"records", r.output.records},
                      {"summary", r.output.summary},
                      {"warnings", r.output.warnings}};
  if (!r.ok) j["error"] = printable_utf8(r.error);  // it may quote a file's bytes
  if (!r.preparation.is_null()) j["preparation"] = r.preparation;
  if (r.probe_before_gbps > 0)
    j["machine_probe"] = {{"read_bytes", kProbeBytes},
                          {"read_gbps_before", r.probe_before_gbps},
                          {"read_gbps_after", r.probe_after_gbps}};
  return j;
}

nlohmann::json build_report(const RunSpec& spec, const Environment& env,
                            const std::vector<CellResult>& results, const RunInfo& info) {
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& r : results) cells.push_back(cell_to_json(r));
  return build_report(spec, env, cells, info);
}

nlohmann::json build_report(const RunSpec& spec, const Environment& env,
                            const nlohmann::json& cells, const RunInfo& info) {
  size_t failed = 0;
  for (const auto& c : cells) failed += c.value("status", "") != "ok";
  return {{"schema", kReportSchemaId},
          {"schema_version", kReportSchemaVersion},
          {"kvbench", {{"version", version()}, {"git_revision", git_revision()}}},
          {"created", info.created},
          {"finished", info.finished},
          {"command", info.command},
          {"config_path", info.config_path},
          {"environment", to_json(env)},
          {"config", spec.resolved},
          {"model", info.model.is_null() ? nlohmann::json::object() : info.model},
          {"cells", cells},
          {"totals", {{"cells", cells.size()}, {"failed", failed}}}};
}

namespace {

// The `.json` files of `dir` oldest first, each parsed, or null when it is not JSON; none when
// `dir` is not a directory. Oldest: by the report's `created` (RFC 3339 UTC, which sorts as
// text), then by name without ".json" (a run's "-2" attempt after its first: with the
// extension, "x-STAMP-2.json" sorted before "x-STAMP.json"); files without `created` first.
std::vector<std::pair<std::filesystem::path, nlohmann::json>> json_files_in(
    const std::filesystem::path& dir) {
  std::error_code ec;
  std::vector<std::filesystem::path> files;
  if (std::filesystem::is_directory(dir, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  std::vector<std::pair<std::filesystem::path, nlohmann::json>> out;
  for (const auto& f : files) {
    nlohmann::json j;
    try {  // as `kvbench report` reads it (nesting, keys twice)
      std::ifstream in(f);
      std::ostringstream text;
      text << in.rdbuf();
      j = parse_json_text(text.str(), f.string());
    } catch (const std::exception&) {
      j = nullptr;
    }
    out.emplace_back(f, std::move(j));
  }
  auto created = [](const nlohmann::json& j) {
    return j.is_object() && j.contains("created") && j["created"].is_string()
               ? j["created"].get<std::string>()
               : std::string();
  };
  std::stable_sort(out.begin(), out.end(), [&](const auto& a, const auto& b) {
    const std::string ca = created(a.second), cb = created(b.second);
    if (ca != cb) return ca < cb;
    return a.first.stem().string() < b.first.stem().string();
  });
  return out;
}

// "" when `report` is a well-formed kvbench report of this schema version (what `kvbench
// report` reads; with `cells`, each of its cells too), else why not.
std::string report_problem(const nlohmann::json& report, const std::filesystem::path& file,
                           bool cells) {
  try {
    if (cells)
      check_report_document(report, file.string());
    else
      check_report_header(report, file.string());
    return "";
  } catch (const Error& e) {
    return e.what();
  } catch (const nlohmann::json::exception& e) {  // a header field of the wrong type
    return malformed_report_message(e, {file.string()});
  }
}

}  // namespace

std::string resume_key(const std::string& id, uint64_t seed) {
  return id + "@" + std::to_string(seed);
}

std::map<std::string, nlohmann::json> previous_ok_cells(const std::filesystem::path& dir) {
  std::map<std::string, nlohmann::json> cells;
  for (const auto& [f, report] : json_files_in(dir)) {
    if (report.is_null()) {
      spdlog::warn("resume: skipping {}: not JSON", f.string());
      continue;
    }
    if (const std::string why = report_problem(report, f, false); !why.empty()) {
      spdlog::warn("resume: skipping {}", why);
      continue;
    }
    for (size_t i = 0; i < report["cells"].size(); ++i) {
      nlohmann::json c = report["cells"][i];
      if (!is_report_cell(c)) {  // the file's other cells are still reused
        spdlog::warn("resume: skipping {}: cells[{}]: expected id, suite, method and status",
                     f.string(), i);
        continue;
      }
      if (c["status"] != "ok") continue;
      const auto seed = c.find("seed");
      if (seed == c.end() || !seed->is_number_unsigned()) continue;  // its inputs are unknown
      if (!c.contains("resumed_from")) c["resumed_from"] = f.string();
      // The build that measured it: a later resume by another build must not pass its timings
      // off as its own (the report's kvbench block names the build that writes it).
      if (!c.contains("measured_by") && report.contains("kvbench") &&
          report["kvbench"].is_object() && report["kvbench"].contains("git_revision"))
        c["measured_by"] = report["kvbench"]["git_revision"];
      cells[resume_key(c["id"].get<std::string>(), seed->get<uint64_t>())] = c;
    }
  }
  return cells;
}

ContinuedReport report_to_continue(const std::filesystem::path& dir,
                                   const nlohmann::json& resolved_config,
                                   const std::vector<std::string>& ids) {
  const std::set<std::string> planned(ids.begin(), ids.end());
  const auto files = json_files_in(dir);
  for (auto it = files.rbegin(); it != files.rend(); ++it) {  // latest stamp first
    const nlohmann::json& report = it->second;
    // Anything but a well-formed kvbench report of this run is left alone.
    if (!report_problem(report, it->first, true).empty() ||
        report.value("config", nlohmann::json()) != resolved_config)
      continue;
    const bool partial = report.contains("partial");
    size_t cells_planned = report["cells"].size();
    if (partial) {
      const nlohmann::json& want = report["partial"].is_object()
                                       ? report["partial"].value("cells_planned", nlohmann::json())
                                       : nlohmann::json();
      if (!want.is_number_unsigned()) continue;
      cells_planned = want.get<size_t>();
    }
    if (cells_planned != ids.size()) continue;
    const bool ours =
        std::all_of(report["cells"].begin(), report["cells"].end(), [&](const auto& c) {
          return c.is_object() && c.contains("id") && c["id"].is_string() &&
                 planned.count(c["id"].template get<std::string>());
        });
    if (!ours) continue;
    const nlohmann::json& created = report.value("created", nlohmann::json());
    const bool all_ok = std::all_of(report["cells"].begin(), report["cells"].end(),
                                    [](const auto& c) { return c.value("status", "") == "ok"; });
    return {it->first, created.is_string() ? created.get<std::string>() : "", partial, all_ok};
  }
  return {};
}

std::filesystem::path report_path(const RunSpec& spec, const std::string& compact_stamp,
                                  int attempt) {
  std::string stem = spec.name;
  for (char& c : stem) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  }
  // Not a hidden file (a name "../x" or ".x"), which `results/*.json` would skip.
  if (!stem.empty() && stem[0] == '.') stem[0] = '_';
  // A file name holds 255 bytes; the report's config keeps the whole name. The end stays (a
  // grid run's -gN), so a sweep's files still differ by their runs.
  if (stem.size() > 120) stem = stem.substr(0, 100) + stem.substr(stem.size() - 20);
  std::string name = stem + "-" + compact_stamp;
  if (attempt > 1) name += "-" + std::to_string(attempt);
  return std::filesystem::path(spec.output_dir) / (name + ".json");
}

std::filesystem::path write_new_report(const nlohmann::json& report, const RunSpec& spec,
                                       const std::string& compact_stamp,
                                       std::atomic<bool>* placed) {
  const std::string content = report_text(report);
  for (int attempt = 1;; ++attempt) {
    const std::filesystem::path path = report_path(spec, compact_stamp, attempt);
    if (write_file_atomically(path, content, /*exclusive=*/true, placed)) return path;
  }
}

void write_report(const nlohmann::json& report, const std::filesystem::path& path) {
  write_file_atomically(path, report_text(report));
}

}  // namespace kvbench
