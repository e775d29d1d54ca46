#include "device_query.h"

#include <cstring>

namespace kvbench::kernels {

cudaError_t device_count(int* count) {
  *count = 0;
  cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) *count = 0;
  return err;
}

cudaError_t device_info(int device, DeviceInfo* out) {
  std::memset(out, 0, sizeof(*out));
  cudaDeviceProp prop;
  cudaError_t err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) return err;
  std::strncpy(out->name, prop.name, sizeof(out->name) - 1);
  out->memory_bytes = prop.totalGlobalMem;
  // Clock fields left cudaDeviceProp in CUDA 13; attributes work on every version.
  struct {
    cudaDeviceAttr attr;
    int* dst;
  } attrs[] = {{cudaDevAttrComputeCapabilityMajor, &out->compute_major},
               {cudaDevAttrComputeCapabilityMinor, &out->compute_minor},
               {cudaDevAttrMultiProcessorCount, &out->sm_count},
               {cudaDevAttrClockRate, &out->sm_clock_khz},
               {cudaDevAttrMemoryClockRate, &out->memory_clock_khz},
               {cudaDevAttrGlobalMemoryBusWidth, &out->memory_bus_bits}};
  for (auto& a : attrs) {
    err = cudaDeviceGetAttribute(a.dst, a.attr, device);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t driver_version(int* version) { return cudaDriverGetVersion(version); }
cudaError_t runtime_version(int* version) { return cudaRuntimeGetVersion(version); }
const char* error_name(cudaError_t error) { return cudaGetErrorName(error); }

cudaError_t event_create(int device, cudaEvent_t* event) {
  *event = nullptr;
  int current = 0;
  cudaError_t err = cudaGetDevice(&current);
  if (err != cudaSuccess) return err;
  // Events belong to the device current at creation; leave the caller's current device alone.
  if (current != device && (err = cudaSetDevice(device)) != cudaSuccess) return err;
  err = cudaEventCreate(event);
  if (current != device) cudaSetDevice(current);
  return err;
}

cudaError_t event_record(cudaEvent_t event, cudaStream_t stream) {
  return cudaEventRecord(event, stream);
}

cudaError_t event_elapsed_ms(cudaEvent_t start, cudaEvent_t end, float* ms) {
  *ms = 0.f;
  cudaError_t err = cudaEventSynchronize(end);
  return err != cudaSuccess ? err : cudaEventElapsedTime(ms, start, end);
}

cudaError_t event_destroy(cudaEvent_t event) { return cudaEventDestroy(event); }

}  // namespace kvbench::kernels
