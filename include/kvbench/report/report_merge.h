// Merging run reports (shards of a sweep, re-runs, several configs) into one set of cells for
// `kvbench report`. Cells are joined on their id, which already hashes everything a cell
// measures and runs on (docs/report-schema.md, "Cell ids"): the same id in two files is the
// same cell measured twice, and the later file's measurement replaces the earlier one.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/report/report_reader.h"

namespace kvbench {

struct MergedCell {
  std::string source;    // the report file it came from
  nlohmann::json cell;   // the cell as written in the report
  nlohmann::json setup;  // cell_setup() of its report
};

struct MergedReports {
  std::vector<std::string> sources;   // in the order given
  std::vector<MergedCell> cells;      // ok and failed, in order of first appearance of the id
  std::vector<std::string> warnings;  // one per replaced cell
  // Sources whose model had random weights (the report's model.random_weights): their
  // accuracy, output lengths and fidelity rankings mean nothing.
  std::vector<std::string> random_weights;
};

// Later reports win: a cell id seen again replaces the earlier cell in place, with a warning
// naming both files.
MergedReports merge_reports(const std::vector<LoadedReport>& reports);

}  // namespace kvbench
