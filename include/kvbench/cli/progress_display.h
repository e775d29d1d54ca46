// Shows Progress on a terminal as a redrawn bar; elsewhere (CI logs, pipes) as a plain line at
// most every `interval_s` seconds, so long work is visible and short work stays quiet.
#pragma once

#include <functional>
#include <ostream>
#include <string>

#include "kvbench/core/progress.h"

namespace kvbench {

class ProgressDisplay final : public Progress {
 public:
  using Clock = std::function<double()>;  // seconds, monotonic; injectable for tests
  ProgressDisplay(std::ostream& os, bool tty, double interval_s = 30.0, Clock clock = {});

  void begin(const std::string& label, size_t total) override;
  void advance(const std::string& detail) override;
  void end() override;

 private:
  void draw_bar(const std::string& detail);

  std::ostream& os_;
  bool tty_;
  double interval_s_;
  Clock clock_;
  std::string label_;
  size_t total_ = 0, done_ = 0;
  double started_ = 0, last_print_ = 0;
  bool active_ = false;
};

// True when stderr is a terminal (and TERM is not "dumb").
bool stderr_is_tty();

}  // namespace kvbench
