// Torch-free CUDA device queries used by `kvbench version` and the report's environment.
// Any error from the runtime (no driver, no device) means "no GPU" to the caller.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

namespace kvbench::kernels {

struct DeviceInfo {
  char name[256];
  int compute_major, compute_minor;
  int sm_count;
  int sm_clock_khz, memory_clock_khz, memory_bus_bits;
  size_t memory_bytes;
};

cudaError_t device_count(int* count);
cudaError_t device_info(int device, DeviceInfo* out);
cudaError_t driver_version(int* version);
cudaError_t runtime_version(int* version);
const char* error_name(cudaError_t error);

// CUDA events for timing work queued on a stream (device time, no host read-back in it).
// event_create makes a timing event on `device`; event_elapsed_ms waits for `end` first.
cudaError_t event_create(int device, cudaEvent_t* event);
cudaError_t event_record(cudaEvent_t event, cudaStream_t stream);
cudaError_t event_elapsed_ms(cudaEvent_t start, cudaEvent_t end, float* ms);
cudaError_t event_destroy(cudaEvent_t event);

}  // namespace kvbench::kernels
