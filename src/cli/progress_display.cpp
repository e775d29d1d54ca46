#include "kvbench/cli/progress_display.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

#include "kvbench/core/text.h"

namespace kvbench {

ProgressDisplay::ProgressDisplay(std::ostream& os, bool tty, double interval_s, Clock clock)
    : os_(os), tty_(tty), interval_s_(interval_s), clock_(std::move(clock)) {
  if (!clock_) {
    clock_ = [] {
      using namespace std::chrono;
      return duration<double>(steady_clock::now().time_since_epoch()).count();
    };
  }
}

void ProgressDisplay::begin(const std::string& label, size_t total) {
  label_ = label;
  total_ = total;
  done_ = 0;
  started_ = last_print_ = clock_();
  active_ = true;
  if (tty_) draw_bar("");
}

void ProgressDisplay::advance(const std::string& detail) {
  if (!active_) return;
  ++done_;
  if (tty_) {
    draw_bar(detail);
  } else if (clock_() - last_print_ >= interval_s_) {
    last_print_ = clock_();
    os_ << "progress: " << label_ << " " << done_ << "/" << total_ << " (" << detail << ", "
        << format_fixed(last_print_ - started_, 0) << " s)\n"
        << std::flush;
  }
}

void ProgressDisplay::end() {
  if (!active_) return;
  active_ = false;
  if (tty_) {
    os_ << "\r\033[K" << std::flush;  // leave the terminal as it was
  } else if (clock_() - started_ >= interval_s_) {
    os_ << "progress: " << label_ << " done " << done_ << "/" << total_ << " in "
        << format_fixed(clock_() - started_, 0) << " s\n"
        << std::flush;
  }
}

void ProgressDisplay::draw_bar(const std::string& detail) {
  constexpr size_t kWidth = 30;
  const size_t filled = total_ ? kWidth * done_ / total_ : 0;
  os_ << "\r\033[K" << label_ << " [" << std::string(filled, '#')
      << std::string(kWidth - filled, '.') << "] " << done_ << "/" << total_;
  if (!detail.empty()) os_ << "  " << detail;
  os_ << std::flush;
}

bool stderr_is_tty() {
  const char* term = std::getenv("TERM");
  return isatty(STDERR_FILENO) && !(term && std::strcmp(term, "dumb") == 0);
}

}  // namespace kvbench
