// The tables of `kvbench report`: per suite one row per (method, setup, varying suite
// parameters, measured point) with the suite's key metrics, each ratio metric beside the same
// row of the baseline method; the failed cells with their errors; and the Pareto front of the
// methods over (KV bits per value, decode tokens/s, KL or accuracy). Values stay JSON (numbers,
// strings, booleans, null) so that md, csv and json render the same table.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/report/report_merge.h"

namespace kvbench {

struct ResultTable {
  std::string name;   // "latency", "throughput", ..., "pareto", "failed"
  std::string title;  // one line for people
  std::vector<std::string> columns;
  std::vector<std::vector<nlohmann::json>> rows;  // one value per column; null = none
};

struct ReportTables {
  std::string baseline;  // the method label ratios are taken against; "" when none
  std::vector<ResultTable> tables;
  std::vector<std::string> notes;  // what could not be tabled or compared, for stderr
};

// `baseline` is a method label as the tables print it ("kivi(bits=2)", "snapkv+palu") or a method
// name whose ok cells share one label; empty means "full" when it names one label, else no
// ratios. A non-empty baseline that names no ok cell's label, or a name with several labels,
// throws Error listing the labels.
ReportTables build_report_tables(const MergedReports& merged, const std::string& baseline);

// A label per method entry (keyed by its JSON dump): its name, joined by its codec's when a
// retention method stores anything but the full cache ("snapkv+palu"); then, when entries of
// that label differ, "snapkv+kivi-4(budget=48, codec.group=32)" with the flattened parameters
// that differ among them (those an entry lacks left out).
std::map<std::string, std::string> method_labels(const std::vector<nlohmann::json>& methods);

// Indices of the rows not dominated by another row: `values[i][d]` is row i's value on
// dimension d, oriented so that larger is better. Exposed for tests.
std::vector<bool> pareto_front(const std::vector<std::vector<double>>& values);

}  // namespace kvbench
