// A plain text table: suites describe their summary as one, the CLI prints it.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace kvbench {

struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> notes;  // lines printed under the table
};

// Columns padded to their widest cell; numbers (cells starting with a digit or '-') right-aligned;
// then the notes, one per line.
void print_table(std::ostream& os, const Table& table);

}  // namespace kvbench
