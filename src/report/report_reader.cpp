#include "kvbench/report/report_reader.h"

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/report/report.h"

namespace kvbench {

bool is_report_cell(const nlohmann::json& c) {
  return c.is_object() && c.contains("id") && c["id"].is_string() && c.contains("suite") &&
         c["suite"].is_string() && c.contains("method") && c["method"].is_object() &&
         c.contains("status") && c["status"].is_string();
}

void check_report_header(const nlohmann::json& doc, const std::string& source) {
  KVB_CHECK(doc.is_object() && doc.value("schema", "") == kReportSchemaId, source,
            ": not a kvbench report (expected \"schema\": \"", kReportSchemaId, "\")");
  const nlohmann::json version = doc.value("schema_version", nlohmann::json());
  KVB_CHECK(version.is_number_integer() && version.get<int64_t>() == kReportSchemaVersion, source,
            ": unsupported report schema_version ", version.dump(), " (this kvbench reads ",
            kReportSchemaVersion, "; re-run the config with this build)");
  KVB_CHECK(doc.contains("cells") && doc["cells"].is_array(), source, ": no \"cells\" array");
  KVB_CHECK(doc.contains("config") && doc["config"].is_object(), source, ": no \"config\" object");
}

namespace {

// The fields report, compare and figures iterate over, by type, so that a hand-edited or
// truncated report is named rather than read as empty (a null records list is no table). The
// rest of the schema is scripts/validate_report.py's.
void check_cell_fields(const nlohmann::json& cell, const std::string& where) {
  const std::pair<const char*, nlohmann::json::value_t> fields[] = {
      {"params", nlohmann::json::value_t::object},
      {"summary", nlohmann::json::value_t::object},
      {"records", nlohmann::json::value_t::array},
      {"warnings", nlohmann::json::value_t::array}};
  for (const auto& [key, type] : fields) {
    if (!cell.contains(key)) continue;
    const nlohmann::json& v = cell[key];
    KVB_CHECK(v.type() == type, where, ".", key, ": expected ", nlohmann::json(type).type_name(),
              ", got ", v.type_name());
  }
  if (!cell.contains("records")) return;
  for (size_t r = 0; r < cell["records"].size(); ++r) {
    const nlohmann::json& rec = cell["records"][r];
    KVB_CHECK(rec.is_object(), where, ".records[", r, "]: expected object, got ", rec.type_name());
    for (const auto& item : rec.items()) {
      // Raw timing samples: what compare resamples and report's tables summarise.
      const std::string& k = item.key();
      if (k != "samples_s" && (k.size() < 10 || k.compare(k.size() - 10, 10, "_samples_s") != 0))
        continue;
      KVB_CHECK(item.value().is_array(), where, ".records[", r, "].", k,
                ": expected an array of numbers, got ", item.value().type_name());
      for (const nlohmann::json& x : item.value())
        KVB_CHECK(x.is_number(), where, ".records[", r, "].", k,
                  ": expected an array of numbers, holds ", x.type_name());
    }
  }
}

}  // namespace

void check_report_document(const nlohmann::json& doc, const std::string& source) {
  check_report_header(doc, source);
  std::set<std::string> ids;  // kvbench never writes a cell twice: which one would count?
  for (size_t i = 0; i < doc["cells"].size(); ++i) {
    const nlohmann::json& cell = doc["cells"][i];
    KVB_CHECK(is_report_cell(cell), source, ": cells[", i,
              "]: expected id, suite, method and status");
    KVB_CHECK(ids.insert(cell["id"].get<std::string>()).second, source, ": cells[", i,
              "]: cell id ", cell["id"].get<std::string>(), " appears twice in one report");
    check_cell_fields(cell, source + ": cells[" + std::to_string(i) + "]");
  }
  KVB_CHECK(!doc.contains("environment") || doc["environment"].is_object(), source,
            ": environment: expected an object, got ", doc["environment"].type_name());
  if (doc.contains("partial")) {
    const nlohmann::json& p = doc["partial"];
    KVB_CHECK(p.is_object() && p.value("cells_done", nlohmann::json()).is_number_integer() &&
                  p.value("cells_planned", nlohmann::json()).is_number_integer(),
              source, ": partial: expected an object with integer cells_done and cells_planned");
  }
}

LoadedReport load_report(const std::string& path) {
  std::error_code ec;
  KVB_CHECK(!std::filesystem::is_directory(path, ec), path,
            ": is a directory (expected a report file, e.g. ", path, "/*.json)");
  std::ifstream in(path);
  KVB_CHECK(in.good(), path, ": cannot read the file");
  std::stringstream text;
  text << in.rdbuf();
  LoadedReport r;
  r.source = path;
  try {  // (nesting past kMaxJsonDepth and keys given twice refused, as in configs)
    r.doc = parse_json_text(text.str(), path);
  } catch (const ConfigError& e) {  // "config: <path>:<line>:<column>: invalid JSON: ..."
    const std::string what = e.what(), prefix = "config: ";
    throw Error(what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what);
  }
  check_report_document(r.doc, path);
  return r;
}

std::string malformed_report_message(const std::exception& e,
                                     const std::vector<std::string>& files) {
  const std::string what = json_error_text(e);
  std::string names;
  for (const std::string& f : files) names += " " + f;
  return "malformed report (" + what + "): a field in" + names +
         " does not match docs/report.schema.json; python3 scripts/validate_report.py" + names +
         " names it";
}

nlohmann::json report_code_path(const nlohmann::json& report) {
  const nlohmann::json cfg = report.value("config", nlohmann::json::object());
  const nlohmann::json env = report.value("environment", nlohmann::json::object());
  const nlohmann::json overrides =
      env.is_object() ? env.value("overrides", nlohmann::json()) : nlohmann::json();
  nlohmann::json path = nlohmann::json::object();
  if (!overrides.is_object() || !cfg.is_object()) return path;
  std::map<std::string, std::string> set;
  for (const auto& [name, value] : overrides.items()) {
    if (value.is_string()) set[name] = value.get<std::string>();
  }
  auto text = [&](const char* key, const char* fallback) {
    const nlohmann::json v = cfg.value(key, nlohmann::json(fallback));
    return v.is_string() ? v.get<std::string>() : std::string();
  };
  const std::string device = text("device", "cpu"), attention = text("attention", "cpu");
  for (const auto& [name, value] : applicable_code_path(set, device, attention)) path[name] = value;
  // Under paged attention on the CPU the variable picks the GPU path's code, which cell ids
  // record as paged_path: another setup too.
  if (attention == "paged" && device == "cpu" && set["KVBENCH_PAGED_PATH"] == "kernels")
    path["KVBENCH_PAGED_PATH"] = "kernels";
  return path;
}

nlohmann::json cell_setup(const nlohmann::json& report, const nlohmann::json& cell) {
  const nlohmann::json& cfg = report["config"];
  nlohmann::json setup = {{"attention", cfg.value("attention", "cpu")},
                          {"device", cfg.value("device", "cpu")},
                          {"threads", cfg.value("threads", nlohmann::json())}};
  if (cell.value("suite", "") != "kernels") setup["model"] = cfg.value("model", nlohmann::json());
  // The code path the run took (its cells' ids carry it too): a report measured with
  // KVBENCH_PAGED_PATH=kernels is another setup than the plain one, not a second row beside it.
  if (nlohmann::json path = report_code_path(report); !path.empty()) setup["code_path"] = path;
  return setup;
}

}  // namespace kvbench
