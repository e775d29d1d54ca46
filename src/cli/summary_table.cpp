#include "kvbench/cli/summary_table.h"

#include "kvbench/core/table.h"
#include "kvbench/core/text.h"
#include "kvbench/report/report_tables.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {

void print_cell_plan(std::ostream& os, const std::vector<Cell>& cells,
                     const std::vector<uint64_t>& estimates) {
  Table t;
  t.columns = {"#", "cell", "suite", "method"};
  if (!estimates.empty()) t.columns.push_back("est. memory");
  for (size_t i = 0; i < cells.size(); ++i) {
    t.rows.push_back({std::to_string(i + 1), cells[i].id, cells[i].suite,
                      cells[i].method["name"].get<std::string>()});
    if (!estimates.empty()) t.rows.back().push_back(format_bytes(double(estimates[i])));
  }
  print_table(os, t);
}

void print_run_summary(std::ostream& os, const std::vector<CellResult>& results) {
  // Cells of one method name with different parameters (four SnapKV budgets) are told apart
  // by the parameters that differ.
  std::vector<nlohmann::json> methods;
  for (const auto& r : results) methods.push_back(r.cell.method);
  const std::map<std::string, std::string> labels = method_labels(methods);
  for (const auto& r : results) {
    const std::string label = labels.at(r.cell.method.dump());
    os << "\n== " << r.cell.id
       << (label != r.cell.method.value("name", "") ? "  " + label : std::string()) << "  ("
       << (r.ok ? "ok" : "FAILED") << ", " << format_fixed(r.duration_s, 1) << " s, peak RSS "
       << format_bytes(static_cast<double>(r.peak_rss_bytes)) << ")\n";
    if (!r.ok) {
      os << "error: " << r.error << "\n";
      continue;
    }
    print_table(os, find_suite(r.cell.suite).make()->summary_table(r.output));
    for (const auto& w : r.output.warnings) os << "warning: " << w << "\n";
  }
}

}  // namespace kvbench
