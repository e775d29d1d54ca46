#include <cerrno>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>

#include "kvbench/cli/commands.h"

namespace kvbench {

CLI::Validator integer_option(uint64_t min, uint64_t max, const std::string& max_note) {
  return CLI::Validator(
      [min, max, max_note](const std::string& v) -> std::string {
        const std::string digits = !v.empty() && v[0] == '-' ? v.substr(1) : v;
        // CLI11 reads "010" as octal 8 and "0x10" as 16: only plain decimal is a number here.
        if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos ||
            (digits.size() > 1 && digits[0] == '0'))
          return "expected a decimal integer without leading zeros, got " + v;
        // Checked here: CLI11 would wrap a negative number into 2^64 - 1 for an unsigned option
        // and clamp one past 2^64 - 1 to it.
        if (digits.size() != v.size())
          return "expected a number >= " + std::to_string(min) + ", got " + v;
        errno = 0;
        const unsigned long long n = std::strtoull(v.c_str(), nullptr, 10);
        if (errno == ERANGE || n > max)
          return "expected a number <= " + std::to_string(max) + max_note + ", got " + v;
        if (n < min) return "expected a number >= " + std::to_string(min) + ", got " + v;
        return std::string();
      },
      "INT");
}

}  // namespace kvbench
