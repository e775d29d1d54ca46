#include "kvbench/core/cuda_stream.h"

#include "kvbench/core/error.h"
#include "kvbench/core/time.h"

#ifdef KVBENCH_HAVE_CUDA
#include "device_query.h"
#endif
#ifdef KVBENCH_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace kvbench {

void* current_cuda_stream(const at::Device& device) {
#ifdef KVBENCH_TORCH_CUDA
  if (device.is_cuda()) return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#endif
  (void)device;
  return nullptr;
}

bool follows_torch_streams() {
#ifdef KVBENCH_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

double wait_for_device(const at::Device& device) {
#ifdef KVBENCH_TORCH_CUDA
  if (device.is_cuda()) {
    const Stopwatch watch;
    c10::cuda::getCurrentCUDAStream(device.index()).synchronize();
    return watch.seconds();
  }
#endif
  (void)device;
  return 0;
}

#ifdef KVBENCH_HAVE_CUDA

namespace {
void check(cudaError_t err, const char* what) {
  KVB_CHECK(err == cudaSuccess, "device timer: ", what, ": ", kernels::error_name(err));
}
cudaEvent_t event(void* e) { return static_cast<cudaEvent_t>(e); }
}  // namespace

DeviceTimer::DeviceTimer(const at::Device& device) : device_(device) {
  KVB_CHECK(device.is_cuda(), "device timer: ", device.str(), " is not a CUDA device");
  const int index = device.has_index() ? device.index() : 0;
  cudaEvent_t a = nullptr, b = nullptr;
  check(kernels::event_create(index, &a), "create");
  if (const cudaError_t err = kernels::event_create(index, &b); err != cudaSuccess) {
    kernels::event_destroy(a);
    check(err, "create");
  }
  start_ = a, end_ = b;
}

DeviceTimer::~DeviceTimer() {
  kernels::event_destroy(event(start_));
  kernels::event_destroy(event(end_));
}

void DeviceTimer::start() {
  check(
      kernels::event_record(event(start_), static_cast<cudaStream_t>(current_cuda_stream(device_))),
      "record");
}

double DeviceTimer::stop_seconds() {
  check(kernels::event_record(event(end_), static_cast<cudaStream_t>(current_cuda_stream(device_))),
        "record");
  float ms = 0.f;
  check(kernels::event_elapsed_ms(event(start_), event(end_), &ms), "elapsed time");
  return double(ms) / 1e3;
}

#else

DeviceTimer::DeviceTimer(const at::Device& device) : device_(device) {
  throw Error("device timer: kvbench was built without the CUDA kernels (KVBENCH_CUDA)");
}
DeviceTimer::~DeviceTimer() = default;
void DeviceTimer::start() {}
double DeviceTimer::stop_seconds() { return 0; }

#endif

}  // namespace kvbench
