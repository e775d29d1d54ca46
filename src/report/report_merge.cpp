#include "kvbench/report/report_merge.h"

#include <map>
#include <string>

namespace kvbench {

MergedReports merge_reports(const std::vector<LoadedReport>& reports) {
  MergedReports out;
  std::map<std::string, size_t> index;  // cell id -> position in out.cells
  for (const LoadedReport& r : reports) {
    out.sources.push_back(r.source);
    if (r.doc.contains("partial")) {
      const nlohmann::json& p = r.doc["partial"];
      out.warnings.push_back(r.source + " is a partial report (" +
                             std::to_string(p.value("cells_done", 0)) + " of " +
                             std::to_string(p.value("cells_planned", 0)) +
                             " cells): its run was stopped; `run --resume` finishes it");
    }
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
      out.warnings.push_back("cell " + id + " appears in " + old.source + " and " + r.source +
                             "; using the one from " + r.source + " (the later file)");
      old = std::move(m);
    }
  }
  return out;
}

}  // namespace kvbench
