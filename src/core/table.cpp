#include "kvbench/core/table.h"

#include <algorithm>
#include <cctype>
#include <iomanip>

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
    for (size_t c = 0; c < width.size(); ++c) {
      const std::string cell = c < row.size() ? row[c] : "";
      os << (c ? "  " : "") << (numeric(cell) ? std::right : std::left)
         << std::setw(static_cast<int>(width[c])) << cell;
    }
    os << '\n';
  };
  print_row(table.columns);
  std::vector<std::string> rule;
  for (size_t w : width) rule.push_back(std::string(w, '-'));
  os << std::left;
  print_row(rule);
  for (const auto& row : table.rows) print_row(row);
  os << std::left;
  for (const auto& note : table.notes) os << note << '\n';
}

}  // namespace kvbench
