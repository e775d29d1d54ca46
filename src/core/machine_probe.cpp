#include "kvbench/core/machine_probe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"

namespace kvbench {

namespace {

// The probe's buffer, allocated and written on first use (so its pages exist before timing).
const std::vector<uint64_t>& probe_buffer() {
  static const std::vector<uint64_t> buffer = [] {
    std::vector<uint64_t> b(kProbeBytes / sizeof(uint64_t));
    for (size_t i = 0; i < b.size(); ++i) b[i] = i * 0x9E3779B97F4A7C15ull;
    return b;
  }();
  return buffer;
}

// One pass over the buffer; four sums so the loop is bound by the reads, not by one add chain.
uint64_t read_pass(const std::vector<uint64_t>& b) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i + 3 < b.size(); i += 4) {
    s0 += b[i], s1 += b[i + 1], s2 += b[i + 2], s3 += b[i + 3];
  }
  return s0 ^ s1 ^ s2 ^ s3;
}

}  // namespace

double probe_read_gbps(double seconds) {
  using Clock = std::chrono::steady_clock;
  const std::vector<uint64_t>& b = probe_buffer();
  volatile uint64_t sink = read_pass(b);  // warm: the buffer in the cache, as the cell had it
  std::vector<double> rates;
  const Clock::time_point end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(seconds));
  do {
    const Clock::time_point t0 = Clock::now();
    sink = sink + read_pass(b);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > 0) rates.push_back(static_cast<double>(kProbeBytes) / s / 1e9);
  } while (Clock::now() < end || rates.size() < 3);
  return median(rates);
}

double probe_spread(double a, double b) {
  if (!(a > 0) || !(b > 0)) return 0;
  return std::max(a, b) / std::min(a, b) - 1;
}

std::string probe_drift_warning(double before_gbps, double after_gbps) {
  if (probe_spread(before_gbps, after_gbps) <= kProbeTolerance) return "";
  return "the machine's read speed (machine_probe: " + format_bytes(double(kProbeBytes)) +
         " read by one thread) moved from " + format_fixed(before_gbps, 1) + " to " +
         format_fixed(after_gbps, 1) + " GB/s during this cell: its timings may differ from " +
         "other cells' by the machine, not the method (docs/report-and-compare.md)";
}

}  // namespace kvbench
