#include "kvbench/core/phase_clock.h"

#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"

#ifdef KVBENCH_HAVE_CUDA
#include "device_query.h"
#endif

namespace kvbench {

namespace {

#ifdef KVBENCH_HAVE_CUDA
void check(cudaError_t err, const char* what) {
  KVB_CHECK(err == cudaSuccess, "phase clock: ", what, ": ", kernels::error_name(err));
}
#endif

}  // namespace

PhaseClock::PhaseClock(const at::Device& device, std::vector<std::string> names)
    : device_(device), names_(std::move(names)) {
  KVB_CHECK(!names_.empty(), "phase clock: no phases");
#ifndef KVBENCH_HAVE_CUDA
  KVB_CHECK(!device.is_cuda(), "phase clock: timing ", device.str(),
            " needs kvbench's CUDA kernels (KVBENCH_CUDA)");
#endif
}

PhaseClock::~PhaseClock() {
#ifdef KVBENCH_HAVE_CUDA
  for (void* e : events_) kernels::event_destroy(static_cast<cudaEvent_t>(e));
#endif
}

void PhaseClock::reserve(size_t boundaries) {
#ifdef KVBENCH_HAVE_CUDA
  while (device_.is_cuda() && events_.size() < boundaries) {
    cudaEvent_t e = nullptr;
    check(kernels::event_create(device_.has_index() ? device_.index() : 0, &e), "create");
    events_.push_back(e);
  }
#else
  (void)boundaries;
#endif
}

// The boundary's time: an event recorded on the stream, or the wall clock.
void PhaseClock::record(size_t boundary) {
  if (!device_.is_cuda()) {
    stamps_.push_back(clock_.seconds());
    return;
  }
#ifdef KVBENCH_HAVE_CUDA
  reserve(boundary + 1);
  check(kernels::event_record(static_cast<cudaEvent_t>(events_[boundary]),
                              static_cast<cudaStream_t>(current_cuda_stream(device_))),
        "record");
#endif
}

void PhaseClock::mark(int phase) {
  KVB_CHECK(phase >= 0 && phase < static_cast<int>(names_.size()), "phase clock: phase ", phase,
            " outside [0, ", names_.size(), ")");
  record(running_.size());  // first: a mark that throws leaves no phase without its boundary
  running_.push_back(phase);
}

void PhaseClock::reset() {
  running_.clear();
  stamps_.clear();
}

double PhaseClock::boundary_seconds(size_t from, size_t to) {
  if (!device_.is_cuda()) return stamps_[to] - stamps_[from];
#ifdef KVBENCH_HAVE_CUDA
  float ms = 0.f;
  check(kernels::event_elapsed_ms(static_cast<cudaEvent_t>(events_[from]),
                                  static_cast<cudaEvent_t>(events_[to]), &ms),
        "elapsed time");
  return double(ms) / 1e3;
#else
  return 0;
#endif
}

std::vector<double> PhaseClock::finish() {
  struct Reset {
    PhaseClock* clock;
    ~Reset() { clock->reset(); }
  } reset_after{this};
  std::vector<double> seconds(names_.size(), 0.0);
  if (running_.empty()) return seconds;
  const size_t marks = running_.size();
  record(marks);  // the closing boundary
  for (size_t i = 0; i < marks; ++i)
    seconds[static_cast<size_t>(running_[i])] += boundary_seconds(i, i + 1);
  return seconds;
}

}  // namespace kvbench
