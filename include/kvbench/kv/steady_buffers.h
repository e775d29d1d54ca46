// What a cache keeps for its steady-state evictions (H2O, TOVA, ScissorHands dropping one token
// per head where the pools are, src/kv/steady_eviction.h) between launches and steps, so that a
// steady layer uploads and allocates nothing: each layer's rows and ring offsets, uploaded again
// only when they change (from step to step they stay while position and tail move on together,
// until the slots are compacted), and the kernel's workspace, grown by a quarter when short.
// A change of the current stream uploads and allocates afresh, defensively: a copy queued on
// the old stream is not ordered before the new one's kernels (a cache is used from one stream,
// core/cuda_stream.h, its pools and lists are not guarded either).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace kvbench {

class SteadyBuffers {
 public:
  // `steps` (SteadyEviction::steps' host values) of `layer`, where `device` is.
  const int* steps(int64_t layer, const std::vector<int>& steps, const at::Device& device);
  // At least `floats` floats on `device`, kept between layers and steps (launches on one
  // stream are ordered).
  float* workspace(int64_t floats, const at::Device& device);

 private:
  struct Steps {
    std::vector<int> host;
    at::Tensor buffer;  // int32 where `device` is; the steps start at `offset`
    int64_t offset = 0;
    // The device asked for (as given: "cuda" without an index never equals a tensor's
    // device(), cuda:0) and current_cuda_stream() at the upload.
    at::Device where = at::kCPU;
    void* stream = nullptr;
  };
  std::vector<Steps> steps_;  // per layer
  at::Tensor work_;
  at::Device work_where_ = at::kCPU;  // as Steps::where, for work_
  void* work_stream_ = nullptr;       // current_cuda_stream() when work_ was made
};

}  // namespace kvbench
