#include "kvbench/core/cuda_stream.h"

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

}  // namespace kvbench
