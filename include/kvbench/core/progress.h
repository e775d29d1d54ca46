// Progress reporting seen by long-running work (suites). The CLI supplies a display (bar on a
// TTY, sparse plain lines otherwise); tests and library users can pass NullProgress.
#pragma once

#include <cstddef>
#include <string>

namespace kvbench {

class Progress {
 public:
  virtual ~Progress() = default;
  // Starts a task of `total` steps; `label` says what is running ("kernels.full.1a2b").
  virtual void begin(const std::string& label, size_t total) = 0;
  // One more step done; `detail` describes the step just finished ("ctx=4096 kv_heads=8").
  virtual void advance(const std::string& detail) = 0;
  virtual void end() = 0;
};

class NullProgress final : public Progress {
 public:
  void begin(const std::string&, size_t) override {}
  void advance(const std::string&) override {}
  void end() override {}
};

}  // namespace kvbench
