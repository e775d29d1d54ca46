// Build identity: the kvbench version (from CMake) and the git revision (generated .cpp).
#pragma once

namespace kvbench {

const char* version();
// Short git hash, "-dirty" when tracked files differed at build time, "unknown" outside git.
const char* git_revision();

}  // namespace kvbench
