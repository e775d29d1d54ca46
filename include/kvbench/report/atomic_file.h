// Whole-file writes that never leave a half-written file behind: write a temporary file in the
// same directory, flush it to disk, then rename it over the target.
#pragma once

#include <filesystem>
#include <string>

namespace kvbench {

// Creates parent directories as needed; throws Error naming the path on failure.
// `exclusive`: only if `path` does not exist yet (the file appears whole or not at all, even
// against another process writing the same name); returns false, writing nothing, if it does.
bool write_file_atomically(const std::filesystem::path& path, const std::string& content,
                           bool exclusive = false);

// Removes the temporary file of a write in progress, if any: for a signal handler (only
// async-signal-safe calls), so a run stopped mid-write leaves no stray file.
void remove_unfinished_atomic_write();

}  // namespace kvbench
