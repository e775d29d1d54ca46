// Process memory as the kernel sees it (Linux /proc), for per-cell peak resident memory and
// for refusing plans that cannot fit before the OOM killer refuses them for us.
#pragma once

#include <cstdint>
#include <string>

namespace kvbench {

// A "Key:   123 kB" line of a /proc file (meminfo, self/status) in bytes; 0 if absent.
uint64_t proc_kb_field(const char* file, const std::string& key);
// Resident set size now (VmRSS); 0 if unknown.
uint64_t current_rss_bytes();
// Peak resident set size since start or the last reset (VmHWM); 0 if unknown.
uint64_t peak_rss_bytes();
// Resets the peak to the current RSS (writes 5 to /proc/self/clear_refs). False if the
// kernel refused, in which case peaks include earlier cells.
bool reset_peak_rss();

}  // namespace kvbench
