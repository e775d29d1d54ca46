#include "kvbench/core/error.h"

#include <cstring>

namespace kvbench::detail {

void throw_check_failure(const char* file, int line, const char* condition,
                         const std::string& message) {
  const char* base = std::strrchr(file, '/');
  std::string where = concat(base ? base + 1 : file, ":", line);
  throw Error(message.empty() ? concat("check failed: ", condition) : message, where);
}

}  // namespace kvbench::detail
