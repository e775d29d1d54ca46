#include "kvbench/core/jsonl.h"

#include <fstream>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"

namespace kvbench {

using nlohmann::json;

std::string jsonl_where(const std::filesystem::path& path, int64_t line) {
  return path.string() + ":" + std::to_string(line);
}

void read_jsonl(const std::filesystem::path& path,
                const std::function<void(const json& row, int64_t line)>& on_row,
                const std::string& context) {
  const std::string lead = context.empty() ? "" : context + ": ";
  std::ifstream in(path);
  KVB_CHECK(in.good(), lead, "cannot read ", path.string());
  std::string text;
  for (int64_t n = 1; std::getline(in, text); ++n) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    json row;
    try {
      row = json::parse(text, json_depth_limit(lead + jsonl_where(path, n)));
    } catch (const json::exception& e) {
      throw Error(lead + jsonl_where(path, n) + ": not JSON (" + json_error_text(e) + ")");
    }
    KVB_CHECK(row.is_object(), lead, jsonl_where(path, n), ": expected a JSON object, got ",
              row.type_name());
    on_row(row, n);
  }
}

void throw_field_error(const json& row, const std::string& key, const std::string& expected,
                       const std::string& at) {
  const std::string lead = at + ": \"" + key + "\": ";
  if (!row.contains(key)) throw Error(lead + "missing (expected " + expected + ")");
  throw Error(lead + "expected " + expected + ", got " + brief_json(row[key], 60));
}

}  // namespace kvbench
