#include "kvbench/core/version.h"

namespace kvbench {

const char* version() { return KVBENCH_VERSION; }

}  // namespace kvbench
