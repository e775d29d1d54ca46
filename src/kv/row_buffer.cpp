#include "kvbench/kv/row_buffer.h"

#include <algorithm>

#include "kvbench/kv/simd.h"

namespace kvbench {

RowBuffer::RowBuffer(int64_t kv_heads, int64_t width, at::ScalarType dtype)
    : kv_heads_(kv_heads), width_(width), dtype_(dtype) {}

at::Tensor RowBuffer::append(int64_t extra) {
  const int64_t capacity = data_.defined() ? data_.size(1) : 0;
  if (size_ + extra > capacity) {
    const int64_t grown = std::max<int64_t>({size_ + extra, 2 * capacity, 16});
    at::Tensor bigger = at::empty({kv_heads_, grown, width_}, at::TensorOptions().dtype(dtype_));
    if (size_ > 0) bigger.narrow(1, 0, size_).copy_(data_.narrow(1, 0, size_));
    data_ = bigger;
  }
  at::Tensor view = data_.narrow(1, size_, extra);
  size_ += extra;
  return view;
}

at::Tensor RowBuffer::rows() const {
  if (!data_.defined()) return at::empty({kv_heads_, 0, width_}, at::TensorOptions().dtype(dtype_));
  return data_.narrow(1, 0, size_);
}

void RowBuffer::row_as_float(int64_t h, int64_t t, float* out) const {
  switch (dtype_) {
    case at::kHalf:
      return simd::to_float(row<at::Half>(h, t), out, width_);
    case at::kBFloat16:
      return simd::to_float(row<at::BFloat16>(h, t), out, width_);
    default:
      return simd::to_float(row<float>(h, t), out, width_);
  }
}

uint64_t RowBuffer::bytes() const {
  return static_cast<uint64_t>(kv_heads_ * size_ * width_) * at::elementSize(dtype_);
}

}  // namespace kvbench
