// Reading run reports back (for `kvbench report` and `kvbench compare`): one loaded report is
// the parsed document and where it came from. Only schema_version 2 is accepted; anything else
// is rejected by name, since the meaning of fields changed between versions.
#pragma once

#include <exception>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

struct LoadedReport {
  std::string source;  // the file as given (names the report in messages and tables)
  nlohmann::json doc;  // the whole report
};

// Throws Error "<source>: ..." when the document is not a kvbench report of schema_version 2
// or lacks `cells` / `config`.
void check_report_document(const nlohmann::json& doc, const std::string& source);
// The same checks less the cells': what run --resume needs before it looks at each cell.
void check_report_header(const nlohmann::json& doc, const std::string& source);
// Whether `cell` has what every report cell has: string id, suite and status, a method object.
bool is_report_cell(const nlohmann::json& cell);
// Reads, parses and checks one file; throws Error naming the file on any problem.
LoadedReport load_report(const std::string& path);

// The message for a report field of the wrong type found while reading `files` (nlohmann's
// type errors name no field): which files, the problem, and the command that names the field.
std::string malformed_report_message(const std::exception& e,
                                     const std::vector<std::string>& files);

// What a cell ran on besides its suite parameters and method: the parts of the report's config
// that enter the cell id (attention, device, resolved threads and, for every suite but
// `kernels`, the model section), and `code_path`: the environment's overrides that apply on that
// device (applicable_code_path), when any. Cells are compared only within one setup.
nlohmann::json cell_setup(const nlohmann::json& report, const nlohmann::json& cell);
// The code path a report's run took, as its cells' ids carry it: the environment.overrides that
// choose the code on its device and attention at other than their defaults
// (applicable_code_path), and KVBENCH_PAGED_PATH=kernels under paged attention on the CPU. An
// empty object when none.
nlohmann::json report_code_path(const nlohmann::json& report);

}  // namespace kvbench
