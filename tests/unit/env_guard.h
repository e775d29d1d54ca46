// Runs a test body under an environment variable, restoring it after (also when the body
// throws): the code-path variables (KVBENCH_PAGED_PATH, KVBENCH_SIMD, ...) are read per call,
// and a developer may run the tests with them set.
#pragma once

#include <cstdlib>
#include <string>

namespace kvbench::testing_support {

// Runs `body` with environment variable `name` set to `value` (null: unset), then restores it.
template <typename Body>
void with_env(const char* name, const char* value, Body body) {
  struct Restore {
    const char* name;
    bool was_set;
    std::string saved;
    ~Restore() {
      if (was_set)
        setenv(name, saved.c_str(), 1);
      else
        unsetenv(name);
    }
  };
  const char* old = std::getenv(name);
  const Restore restore{name, old != nullptr, old ? old : ""};
  if (value)
    setenv(name, value, 1);
  else
    unsetenv(name);
  body();
}

}  // namespace kvbench::testing_support
