#include "kvbench/report/table_render.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "kvbench/core/text.h"

namespace kvbench {
namespace {

using json = nlohmann::json;

std::string markdown_cell(const json& v) {
  if (v.is_boolean()) return v.get<bool>() ? "**yes**" : "no";
  // A row is one line: a newline in a value (a prompt_text, a task name) would end it.
  std::string s = replace_all(format_value(v), "|", "\\|");
  s = replace_all(replace_all(replace_all(s, "\r\n", "<br>"), "\n", "<br>"), "\r", "<br>");
  return s;
}

std::string csv_field(const json& v) {
  std::string s;
  if (v.is_null()) return s;
  if (v.is_string()) {
    s = v.get<std::string>();
  } else {
    s = v.dump();  // full precision; booleans as true/false
  }
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  return "\"" + replace_all(s, "\"", "\"\"") + "\"";
}

}  // namespace

std::string format_value(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  if (v.is_number_integer()) return v.dump();
  if (v.is_number()) {
    const double d = v.get<double>();
    if (!std::isfinite(d)) return v.dump();
    if (d == std::floor(d) && std::fabs(d) < 1e12) return std::to_string(static_cast<int64_t>(d));
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", d);
    return buf;
  }
  return v.dump();
}

void render_markdown(std::ostream& os, const ReportTables& tables,
                     const std::vector<std::string>& sources) {
  os << "# kvbench report\n\n"
     << "Reports: " << join(sources, ", ") << ".\n"
     << "Baseline: "
     << (tables.baseline.empty() ? std::string("none (no ratios)") : "`" + tables.baseline + "`")
     << ".\n";
  for (const ResultTable& t : tables.tables) {
    os << "\n## " << t.name << "\n\n" << t.title << "\n\n|";
    for (const std::string& c : t.columns) os << " " << c << " |";
    os << "\n|";
    for (size_t i = 0; i < t.columns.size(); ++i) os << "---|";
    os << "\n";
    for (const auto& row : t.rows) {
      os << "|";
      for (const json& v : row) os << " " << markdown_cell(v) << " |";
      os << "\n";
    }
  }
  if (!tables.notes.empty()) {
    os << "\n## notes\n\n";
    for (const std::string& n : tables.notes) os << "- " << n << "\n";
  }
}

void render_csv(std::ostream& os, const ReportTables& tables) {
  std::vector<std::string> columns = {"table"};
  for (const ResultTable& t : tables.tables) {
    for (const std::string& c : t.columns) {
      if (std::find(columns.begin(), columns.end(), c) == columns.end()) columns.push_back(c);
    }
  }
  for (size_t i = 0; i < columns.size(); ++i) os << (i ? "," : "") << csv_field(columns[i]);
  os << "\n";
  for (const ResultTable& t : tables.tables) {
    for (const auto& row : t.rows) {
      std::vector<json> line(columns.size());
      line[0] = t.name;
      for (size_t c = 0; c < t.columns.size(); ++c) {
        const size_t at = static_cast<size_t>(
            std::find(columns.begin(), columns.end(), t.columns[c]) - columns.begin());
        line[at] = row[c];
      }
      for (size_t i = 0; i < line.size(); ++i) os << (i ? "," : "") << csv_field(line[i]);
      os << "\n";
    }
  }
}

json render_json(const ReportTables& tables, const std::vector<std::string>& sources,
                 const std::vector<std::string>& warnings) {
  json out = {{"sources", sources},
              {"baseline", tables.baseline.empty() ? json() : json(tables.baseline)},
              {"warnings", warnings},
              {"notes", tables.notes},
              {"tables", json::array()}};
  for (const ResultTable& t : tables.tables) {
    json rows = json::array();
    for (const auto& row : t.rows) {
      json obj = json::object();
      for (size_t c = 0; c < t.columns.size(); ++c) obj[t.columns[c]] = row[c];
      rows.push_back(std::move(obj));
    }
    out["tables"].push_back(
        {{"name", t.name}, {"title", t.title}, {"columns", t.columns}, {"rows", rows}});
  }
  return out;
}

}  // namespace kvbench
