// The devices the paged-cache tests run on: "cpu" (the CPU path: reference attention over the
// decoded pages), "cuda" (the GPU path with the kernels; skipped where libtorch has no CUDA)
// and "emulated" (the GPU path's code on CPU tensors, the kernels' host references in place of
// the kernels: block tables, retained lists and tails, kernel scores checked on any machine).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace kvbench::testing_support {

struct PagedDevice {
  at::Device device = at::kCPU;
  bool emulated = false;
  // The GPU path (cuda or emulated): its fp16 queries and outputs bound the error, not fp32.
  bool kernel_path() const { return emulated || device.is_cuda(); }
};

inline PagedDevice paged_device(const std::string& name) {
  if (name == "emulated") return {at::kCPU, true};
  return {at::Device(name), false};
}

// The gtest name of a (method entry, device) parameter whose entries each run on the three
// devices above, in that order: "cpu_p3" (`tag` "_p"), "emulated_m0" ("_m").
template <class Info>
std::string paged_case_name(const Info& info, const char* tag = "_p") {
  return std::string(std::get<1>(info.param)) + tag + std::to_string(info.index / 3);
}

}  // namespace kvbench::testing_support
