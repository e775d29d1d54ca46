// Helpers of the GPU tests: device detection (tests skip with the reason when there is no
// GPU), a device allocation that frees itself, and an assertion on CUDA calls that also
// prints the kernel library's own reason.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#define ASSERT_CUDA_WITH(expr, reason)                                                        \
  do {                                                                                        \
    cudaError_t e_ = (expr);                                                                  \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorString(e_) << " " << (reason); \
  } while (0)

namespace kvbench::gpu_test {

inline bool have_gpu(std::string* why) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    *why = std::string("no CUDA device: ") +
           (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return false;
  }
  return true;
}

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  // Copies `host` in; an upload of the same size reuses the allocation, so that a problem
  // holding `ptr` from an earlier upload (an output re-poisoned between passes) stays valid.
  template <class T>
  cudaError_t upload(const std::vector<T>& host) {
    const size_t n = host.size() * sizeof(T);
    if (n != bytes) {
      cudaFree(ptr);
      ptr = nullptr, bytes = 0;
      if (n == 0) return cudaSuccess;
      cudaError_t e = cudaMalloc(&ptr, n);
      if (e != cudaSuccess) return e;
      bytes = n;
    }
    return n == 0 ? cudaSuccess : cudaMemcpy(ptr, host.data(), n, cudaMemcpyHostToDevice);
  }
  template <class T>
  cudaError_t download(std::vector<T>& host) const {
    if (host.empty()) return cudaSuccess;
    return cudaMemcpy(host.data(), ptr, host.size() * sizeof(T), cudaMemcpyDeviceToHost);
  }
};

}  // namespace kvbench::gpu_test
