// Wall-clock helpers: RFC 3339 timestamps for reports and a monotonic stopwatch for timings.
#pragma once

#include <chrono>
#include <string>

namespace kvbench {

// Current UTC time as RFC 3339 with milliseconds: "2026-11-23T10:04:05.123Z".
std::string now_rfc3339();
// Compact UTC stamp for file names: "20261123T100405Z".
std::string now_compact_utc();

class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  void restart() { start_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kvbench
