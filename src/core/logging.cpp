#include "kvbench/core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "kvbench/core/error.h"

namespace kvbench {

void setup_logging(const std::string& level) {
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "off"};
  bool known = false;
  for (const char* l : kLevels) known = known || level == l;
  KVB_CHECK(known, "--log-level: expected one of trace, debug, info, warn, error, off, got '",
            level, "'");
  auto logger = spdlog::get("kvbench");
  if (!logger) logger = spdlog::stderr_color_mt("kvbench");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace kvbench
