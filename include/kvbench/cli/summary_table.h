// Human-readable output of `run`: the cell plan (for --dry-run / validate) and per-cell tables.
#pragma once

#include <ostream>
#include <vector>

#include "kvbench/suites/cell.h"
#include "kvbench/suites/runner.h"

namespace kvbench {

// `estimates` (bytes per cell) may be empty.
void print_cell_plan(std::ostream& os, const std::vector<Cell>& cells,
                     const std::vector<uint64_t>& estimates = {});
void print_run_summary(std::ostream& os, const std::vector<CellResult>& results);

}  // namespace kvbench
