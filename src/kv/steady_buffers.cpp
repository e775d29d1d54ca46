#include "kvbench/kv/steady_buffers.h"

#include <algorithm>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/kv/paged_cache.h"

namespace kvbench {

void SteadyGroups::add(size_t index, int64_t count, int64_t held) {
  const std::pair<int64_t, int64_t> shape{count, held};
  const auto at = std::find(shapes_.begin(), shapes_.end(), shape);
  if (at != shapes_.end()) {
    groups_[size_t(at - shapes_.begin())].push_back(index);
    return;
  }
  shapes_.push_back(shape);
  groups_.push_back({index});
}

bool SteadyGroups::contains(size_t index) const {
  for (const std::vector<size_t>& g : groups_)
    if (std::find(g.begin(), g.end(), index) != g.end()) return true;
  return false;
}

const int* SteadyBuffers::steps(int64_t layer, size_t group, const std::vector<int>& steps,
                                const at::Device& device) {
  if (steps_.size() <= size_t(layer)) steps_.resize(size_t(layer) + 1);
  std::vector<Steps>& launches = steps_[size_t(layer)];
  if (launches.size() <= group) launches.resize(group + 1);
  Steps& kept = launches[group];
  void* stream = device.is_cuda() ? current_cuda_stream(device) : nullptr;
  if (steps != kept.host || !kept.buffer.defined() || kept.where != device ||
      kept.stream != stream) {
    const UploadedList up = upload_lists({at::tensor(steps, at::kInt)}, device)[0];
    kept = {steps, up.buffer, up.offset, device, stream};
  }
  return kept.buffer.data_ptr<int>() + kept.offset;
}

float* SteadyBuffers::workspace(int64_t floats, const at::Device& device) {
  void* stream = device.is_cuda() ? current_cuda_stream(device) : nullptr;
  const bool same = work_.defined() && work_where_ == device && work_stream_ == stream;
  if (!same || work_.numel() < floats) {
    const int64_t grown = same ? std::max(floats, work_.numel() * 5 / 4) : floats;
    work_ = at::empty({grown}, at::TensorOptions().dtype(at::kFloat).device(device));
    work_where_ = device, work_stream_ = stream;
  }
  return work_.data_ptr<float>();
}

}  // namespace kvbench
