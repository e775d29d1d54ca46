// Errors: kvbench::Error carries a one-line user-facing message plus the source location that
// raised it (shown at debug log level). ConfigError adds the config key path, so every config
// problem reads "config: <key.path>: <what was expected, what was found>".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace kvbench {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, std::string where = {})
      : std::runtime_error(message), where_(std::move(where)) {}
  // "file:line" of the check that failed; empty when thrown directly.
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

// A request whose estimated bytes do not fit the memory there is (check_memory_fits,
// check_fits_on): what a caller that can go on without it (a capacity batch) may catch.
class MemoryFitError : public Error {
 public:
  using Error::Error;
};

// A problem in the run configuration; `key_path` names the offending key ("suites[0].repeats").
class ConfigError : public Error {
 public:
  ConfigError(const std::string& key_path, const std::string& problem)
      : Error("config: " + (key_path.empty() ? problem : key_path + ": " + problem)),
        key_path_(key_path) {}
  const std::string& key_path() const { return key_path_; }

 private:
  std::string key_path_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_check_failure(const char* file, int line, const char* condition,
                                      const std::string& message);
}  // namespace detail

}  // namespace kvbench

// Throws kvbench::Error with the message (streamed arguments) when `cond` is false.
#define KVB_CHECK(cond, ...)                                                          \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      ::kvbench::detail::throw_check_failure(__FILE__, __LINE__, #cond,               \
                                             ::kvbench::detail::concat(__VA_ARGS__)); \
    }                                                                                 \
  } while (0)
