// The CUDA stream kvbench's own kernels launch on: torch's current stream on the tensor's
// device, so that a kernel is ordered after the torch ops that wrote its inputs and before
// the ones that read its outputs when a caller makes another stream current (e.g. a pool
// stream). A cache's device state (pools, tables) is ordered on the stream that used it: use
// one cache from one stream. (CUDA-graph capture would also need steps without host syncs,
// which the caches' uploads and read-backs are not yet.) Kept as an opaque handle so that this
// header needs no CUDA headers.
#pragma once

#include <ATen/ATen.h>

namespace kvbench {

// torch's current CUDA stream on `device` as a cudaStream_t; nullptr (the legacy default
// stream, which is torch's own default) where this libtorch has no CUDA or `device` is not a
// GPU.
void* current_cuda_stream(const at::Device& device);

// Whether current_cuda_stream can name a stream other than the default (a libtorch with CUDA).
bool follows_torch_streams();

// Waits until the work queued on torch's current stream of `device` has finished and returns
// the seconds waited: 0 at once off the GPU. A wall clock around work that ends in a read-back
// to the host (a retention policy's choice) would otherwise count the wait for everything
// queued before it; its callers take this wait out.
double wait_for_device(const at::Device& device);

// Times work queued on torch's current stream of a CUDA device with CUDA events: the device's
// time from start() to stop_seconds(), without the latency of a read-back to the host that a
// wall clock around the same calls would add. Throws Error where kvbench has no CUDA kernels.
class DeviceTimer {
 public:
  explicit DeviceTimer(const at::Device& device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;

  void start();
  // Seconds since start() on the device; waits for the work queued until now to finish.
  double stop_seconds();

 private:
  at::Device device_;
  void* start_ = nullptr;  // cudaEvent_t
  void* end_ = nullptr;
};

}  // namespace kvbench
