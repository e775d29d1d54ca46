#include "kvbench/kv/steady_buffers.h"

#include <algorithm>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/kv/paged_cache.h"

namespace kvbench {

const int* SteadyBuffers::steps(int64_t layer, const std::vector<int>& steps,
                                const at::Device& device) {
  if (steps_.size() <= size_t(layer)) steps_.resize(size_t(layer) + 1);
  Steps& kept = steps_[size_t(layer)];
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
