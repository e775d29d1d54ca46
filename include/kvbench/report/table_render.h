// Rendering ResultTables for `kvbench report`: GitHub markdown (one table per section, numbers
// to 4 significant digits), CSV (one table, a `table` column naming the section, the union of
// all columns, full precision) and JSON (every table with its rows as objects).
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/report/report_tables.h"

namespace kvbench {

// A number for people: integers in full, other values to 4 significant digits; null as "".
std::string format_value(const nlohmann::json& v);

void render_markdown(std::ostream& os, const ReportTables& tables,
                     const std::vector<std::string>& sources);
void render_csv(std::ostream& os, const ReportTables& tables);
nlohmann::json render_json(const ReportTables& tables, const std::vector<std::string>& sources,
                           const std::vector<std::string>& warnings);

}  // namespace kvbench
