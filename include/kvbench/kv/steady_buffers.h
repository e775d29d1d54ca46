// What a cache keeps for its steady-state evictions (H2O, TOVA, ScissorHands dropping one token
// per head where the pools are, src/kv/steady_eviction.h) between launches and steps, so that a
// steady layer uploads and allocates nothing: each layer's (and launch's: SteadyGroups) rows and
// ring offsets, uploaded again only when they change (from step to step they stay while
// position and tail move on together, until the slots are compacted), and the kernel's
// workspace, grown by a quarter when short (shared by a layer's launches, which one stream
// orders).
// A change of the current stream uploads and allocates afresh, defensively: a copy queued on
// the old stream is not ordered before the new one's kernels (a cache is used from one stream,
// core/cuda_stream.h, its pools and lists are not guarded either).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace kvbench {

// A layer's sequences in the steady state, in groups of one list length and one held count
// (what one launch takes): sequences whose budgets differ (plain `h2o`'s fractions of prompts
// of different lengths, in a serving step) get a launch per group instead of selecting and
// reading back. Groups in order of their first sequence.
class SteadyGroups {
 public:
  void add(size_t index, int64_t count, int64_t held);
  const std::vector<std::vector<size_t>>& groups() const { return groups_; }
  bool contains(size_t index) const;
  bool empty() const { return groups_.empty(); }

 private:
  std::vector<std::pair<int64_t, int64_t>> shapes_;  // per group: (count, held)
  std::vector<std::vector<size_t>> groups_;
};

class SteadyBuffers {
 public:
  // `steps` (SteadyEviction::steps' host values) of `layer`'s launch `group` (SteadyGroups),
  // where `device` is.
  const int* steps(int64_t layer, size_t group, const std::vector<int>& steps,
                   const at::Device& device);
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
  std::vector<std::vector<Steps>> steps_;  // per layer and launch
  at::Tensor work_;
  at::Device work_where_ = at::kCPU;  // as Steps::where, for work_
  void* work_stream_ = nullptr;       // current_cuda_stream() when work_ was made
};

}  // namespace kvbench
