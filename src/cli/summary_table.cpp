#include "kvbench/cli/summary_table.h"

#include "kvbench/core/table.h"
#include "kvbench/core/text.h"
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
  for (const auto& r : results) {
    os << "\n== " << r.cell.id << "  (" << (r.ok ? "ok" : "FAILED") << ", "
       << format_fixed(r.duration_s, 1) << " s, peak RSS "
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
