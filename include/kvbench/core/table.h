// A plain text table: suites describe their summary as one, the CLI prints it.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace kvbench {

struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};

// Columns padded to their widest cell; numbers (cells starting with a digit or '-') right-aligned.
void print_table(std::ostream& os, const Table& table);

}  // namespace kvbench
