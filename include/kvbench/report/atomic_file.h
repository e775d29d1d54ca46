// Whole-file writes that never leave a half-written file behind: write a temporary file in the
// same directory, flush it to disk, then rename it over the target.
#pragma once

#include <filesystem>
#include <string>

namespace kvbench {

// Creates parent directories as needed; throws Error naming the path on failure.
void write_file_atomically(const std::filesystem::path& path, const std::string& content);

}  // namespace kvbench
