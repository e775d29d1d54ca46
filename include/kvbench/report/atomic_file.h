// Whole-file writes that never leave a half-written file behind: write a temporary file in the
// same directory, flush it to disk, then rename it over the target.
#pragma once

#include <atomic>
#include <filesystem>
#include <string>

namespace kvbench {

// Creates parent directories as needed; throws Error naming the path on failure.
// `exclusive`: only if `path` does not exist yet (the file appears whole or not at all, even
// against another process writing the same name); returns false, writing nothing, if it does.
// `placed`, when given, is set the moment the file is in place, before the directory is synced:
// a signal handler reading it knows whether the file exists.
bool write_file_atomically(const std::filesystem::path& path, const std::string& content,
                           bool exclusive = false, std::atomic<bool>* placed = nullptr);

// Removes the temporary file of a write in progress, if any: for a signal handler (only
// async-signal-safe calls), so a run stopped mid-write leaves no stray file.
void remove_unfinished_atomic_write();

// Whether the exclusive write in progress has put its file in place already (its temporary is
// hard-linked to the target), for a signal handler: a signal that arrives while link() runs is
// handled as it returns, before `placed` can be set.
bool unfinished_atomic_write_placed();

}  // namespace kvbench
