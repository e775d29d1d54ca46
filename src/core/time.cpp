#include "kvbench/core/time.h"

#include <cstdio>
#include <ctime>

namespace kvbench {
namespace {

std::tm utc_now(long* millis) {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  std::time_t secs = static_cast<std::time_t>(ms.count() / 1000);
  if (millis) *millis = static_cast<long>(ms.count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return tm;
}

}  // namespace

std::string now_rfc3339() {
  long millis = 0;
  std::tm tm = utc_now(&millis);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[48];
  std::snprintf(out, sizeof(out), "%s.%03ldZ", buf, millis);
  return out;
}

std::string now_compact_utc() {
  std::tm tm = utc_now(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

}  // namespace kvbench
