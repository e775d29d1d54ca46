#include "kvbench/report/report_merge.h"

#include <filesystem>
#include <map>
#include <string>

namespace kvbench {

namespace {

// Whether `resumed_from` (a path as `run --resume` recorded it) names the report `source`.
bool same_file(const std::string& resumed_from, const std::string& source) {
  std::error_code ec;
  const bool same = std::filesystem::equivalent(resumed_from, source, ec);
  return !ec ? same
             : std::filesystem::path(resumed_from).filename() ==
                   std::filesystem::path(source).filename();
}

}  // namespace

MergedReports merge_reports(const std::vector<LoadedReport>& reports) {
  MergedReports out;
  std::map<std::string, size_t> index;                // cell id -> position in out.cells
  std::vector<size_t> superseded(reports.size(), 0);  // cells a later file replaced
  std::map<std::string, size_t> report_of;            // source -> its position in `reports`
  for (size_t i = 0; i < reports.size(); ++i) {
    const LoadedReport& r = reports[i];
    report_of[r.source] = i;
    out.sources.push_back(r.source);
    const nlohmann::json& model = r.doc.value("model", nlohmann::json::object());
    if (model.is_object() && model.value("random_weights", false))
      out.random_weights.push_back(r.source);
    for (const nlohmann::json& cell : r.doc["cells"]) {
      MergedCell m{r.source, cell, cell_setup(r.doc, cell)};
      const std::string id = cell["id"].get<std::string>();
      auto it = index.find(id);
      if (it == index.end()) {
        index.emplace(id, out.cells.size());
        out.cells.push_back(std::move(m));
        continue;
      }
      MergedCell& old = out.cells[it->second];
      ++superseded[report_of[old.source]];
      // A cell `run --resume` reused from the earlier file is the same measurement.
      if (!same_file(cell.value("resumed_from", ""), old.source))
        out.warnings.push_back("cell " + id + " appears in " + old.source + " and " + r.source +
                               "; using the one from " + r.source + " (the later file)");
      old = std::move(m);
    }
  }
  // A partial report whose cells a later file (its resumed run) all replaced needs no warning.
  for (size_t i = 0; i < reports.size(); ++i) {
    const nlohmann::json& doc = reports[i].doc;
    if (!doc.contains("partial") || superseded[i] == doc["cells"].size()) continue;
    const nlohmann::json& p = doc["partial"];
    out.warnings.push_back(reports[i].source + " is a partial report (" +
                           std::to_string(p.value("cells_done", 0)) + " of " +
                           std::to_string(p.value("cells_planned", 0)) +
                           " cells): its run was stopped; `run --resume` finishes it");
  }
  return out;
}

}  // namespace kvbench
