#include "kvbench/core/memory.h"

#include <cstdlib>
#include <fstream>
#include <string>

namespace kvbench {
uint64_t proc_kb_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) == 0) {
      return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10) << 10;  // kB
    }
  }
  return 0;
}

uint64_t current_rss_bytes() { return proc_kb_field("/proc/self/status", "VmRSS"); }
uint64_t peak_rss_bytes() { return proc_kb_field("/proc/self/status", "VmHWM"); }

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

}  // namespace kvbench
