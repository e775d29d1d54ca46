// A tripwire for a machine whose speed moves under the benchmark. On a shared VM the host's cache
// and memory bandwidth can shift between levels for seconds at a time (docs/report-and-compare.md
// measured 1.45x on the 2-core CI machine while a compute-bound loop held steady), so two cells
// timed a minute apart may differ by the machine, not the method. The runner reads a fixed
// buffer just before and just after each cell on the CPU and records the rate; the cell warns
// when the two differ, and `kvbench report` notes when its cells' rates spread. Probes at the
// cell's ends cannot see a shift that comes and goes inside it: a tripwire, not a correction.
#pragma once

#include <cstddef>
#include <string>

namespace kvbench {

// Bytes the probe reads: about a small model's decode-step working set, resident in a
// server's last-level cache.
constexpr size_t kProbeBytes = size_t{16} << 20;

// GB/s of one thread reading kProbeBytes (a buffer written first, freed after) over and over
// for at least `seconds`: the median of its passes.
double probe_read_gbps(double seconds = 0.02);

// Relative spread of two probe rates, |hi / lo - 1| (0 when either is not positive).
double probe_spread(double a, double b);

// Above this relative spread the machine is taken to have moved.
constexpr double kProbeTolerance = 0.15;

// "the machine's read speed (...) moved from A to B GB/s during this cell: ..." when the probes
// before and after a cell differ by more than kProbeTolerance; empty otherwise.
std::string probe_drift_warning(double before_gbps, double after_gbps);

}  // namespace kvbench
