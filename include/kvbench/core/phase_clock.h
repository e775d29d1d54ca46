// Splits a step's time into named phases, to say where a decode step goes (attention against
// the weights' matmuls, the norms, the head): what decides whether a smaller KV cache can make
// the step faster at all.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "kvbench/core/time.h"

namespace kvbench {

// mark(p) ends the running phase and starts phase p; finish() ends the last one and returns
// the seconds of each phase in the step (a phase marked several times, e.g. once per layer,
// sums its intervals), then starts over. On a CUDA device the marks are events on torch's
// current stream, so a phase's time is the device's between its marks, idle time included: a
// phase the host is slow to issue shows as the device waiting in it. Elsewhere it is a wall
// clock (CPU work runs as it is issued). Marks cost a few microseconds of host time each, so
// the suites mark untimed steps only.
class PhaseClock {
 public:
  PhaseClock(const at::Device& device, std::vector<std::string> names);
  ~PhaseClock();
  PhaseClock(const PhaseClock&) = delete;
  PhaseClock& operator=(const PhaseClock&) = delete;

  const std::vector<std::string>& names() const { return names_; }
  const at::Device& device() const { return device_; }
  // Makes the events of `boundaries` marks now (on a GPU), so that a step's first marks do not
  // create them inside its phases.
  void reserve(size_t boundaries);
  void mark(int phase);
  // Seconds per phase (names().size() of them) since the step's first mark; on a GPU, waits for
  // the work queued until now to finish. Zeros when nothing was marked. Starts a new step, also
  // when it throws.
  std::vector<double> finish();
  // Forgets the marks of a step that did not finish (one that threw).
  void reset();

 private:
  double boundary_seconds(size_t from, size_t to);
  void record(size_t boundary);

  at::Device device_;
  std::vector<std::string> names_;
  std::vector<int> running_;    // the phase each mark started, in order
  std::vector<void*> events_;   // CUDA: one cudaEvent_t per boundary, kept for the next step
  std::vector<double> stamps_;  // elsewhere: the wall clock at each boundary
  Stopwatch clock_;
};

}  // namespace kvbench
