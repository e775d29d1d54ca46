// Logging setup: one spdlog logger on stderr, so stdout stays free for tables and paths.
#pragma once

#include <string>

namespace kvbench {

// `level` is one of trace, debug, info, warn, error, off; throws Error otherwise.
void setup_logging(const std::string& level);

}  // namespace kvbench
