#include "kvbench/core/table.h"

#include <algorithm>
#include <cctype>

namespace kvbench {
namespace {

bool numeric(const std::string& cell) {
  return !cell.empty() &&
         (std::isdigit(static_cast<unsigned char>(cell[0])) || cell[0] == '-' || cell[0] == '+');
}

}  // namespace

void print_table(std::ostream& os, const Table& table) {
  std::vector<size_t> width(table.columns.size());
  for (size_t c = 0; c < width.size(); ++c) {
    width[c] = table.columns[c].size();
    for (const auto& row : table.rows) {
      if (c < row.size()) width[c] = std::max(width[c], row[c].size());
    }
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < row.size() ? row[c] : "";
      const std::string pad(width[c] - std::min(width[c], cell.size()), ' ');
      line += (c ? "  " : "") + (numeric(cell) ? pad + cell : cell + pad);
    }
    // No trailing blanks (a left-aligned last column would leave them in diffs and logs).
    line.erase(line.find_last_not_of(' ') + 1);
    os << line << '\n';
  };
  print_row(table.columns);
  std::vector<std::string> rule;
  for (size_t w : width) rule.push_back(std::string(w, '-'));
  print_row(rule);
  for (const auto& row : table.rows) print_row(row);
  for (const auto& note : table.notes) os << note << '\n';
}

}  // namespace kvbench
