#include "kvbench/core/machine_probe.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <sys/mman.h>

#include "kvbench/core/error.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"

namespace kvbench {

namespace {

// The probe's buffer, mapped per probe and unmapped after it, outside the allocator: the cells'
// peak resident memory does not carry it, and malloc's thresholds (which move after a large
// free) stay as the benchmark left them. Written first, so its pages exist before timing.
class ProbeBuffer {
 public:
  ProbeBuffer() {
    void* p =
        mmap(nullptr, kProbeBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    KVB_CHECK(p != MAP_FAILED, "machine probe: cannot map ", kProbeBytes,
              " bytes: ", std::strerror(errno));
    data_ = static_cast<uint64_t*>(p);
    for (size_t i = 0; i < size(); ++i) data_[i] = i * 0x9E3779B97F4A7C15ull;
  }
  ~ProbeBuffer() { munmap(data_, kProbeBytes); }
  ProbeBuffer(const ProbeBuffer&) = delete;
  ProbeBuffer& operator=(const ProbeBuffer&) = delete;
  const uint64_t* data() const { return data_; }
  size_t size() const { return kProbeBytes / sizeof(uint64_t); }

 private:
  uint64_t* data_ = nullptr;
};

// One pass over the buffer; four sums so the loop is bound by the reads, not by one add chain.
uint64_t read_pass(const ProbeBuffer& b) {
  const uint64_t* x = b.data();
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i + 3 < b.size(); i += 4) {
    s0 += x[i], s1 += x[i + 1], s2 += x[i + 2], s3 += x[i + 3];
  }
  return s0 ^ s1 ^ s2 ^ s3;
}

}  // namespace

double probe_read_gbps(double seconds) {
  using Clock = std::chrono::steady_clock;
  const ProbeBuffer b;
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
