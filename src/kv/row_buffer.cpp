#include "kvbench/kv/row_buffer.h"

#include <algorithm>
#include <cstring>

#include "kvbench/core/error.h"
#include "kvbench/kv/simd.h"

namespace kvbench {

RowBuffer::RowBuffer(int64_t kv_heads, int64_t width, at::ScalarType dtype)
    : kv_heads_(kv_heads), width_(width), dtype_(dtype) {}

void RowBuffer::reallocate(int64_t rows) {
  at::Tensor fresh = at::empty({kv_heads_, rows, width_}, at::TensorOptions().dtype(dtype_));
  if (size_ > 0) fresh.narrow(1, 0, size_).copy_(data_.narrow(1, 0, size_));
  data_ = fresh;
}

void RowBuffer::reserve(int64_t rows) {
  if (rows <= (data_.defined() ? data_.size(1) : 0)) return;
  reallocate(rows);
}

void RowBuffer::fit(int64_t rows) {
  rows = std::max(rows, size_);
  if (!data_.defined() || data_.size(1) == rows) return;
  reallocate(rows);
}

at::Tensor RowBuffer::append(int64_t extra) {
  const int64_t capacity = data_.defined() ? data_.size(1) : 0;
  if (size_ + extra > capacity) reserve(std::max<int64_t>({size_ + extra, 2 * capacity, 16}));
  at::Tensor view = data_.narrow(1, size_, extra);
  size_ += extra;
  return view;
}

void RowBuffer::retain(const RowMoves& moves) {
  KVB_CHECK(static_cast<int64_t>(moves.offsets.size()) == kv_heads_ + 1 && moves.size <= size_,
            "row buffer: moves for ", moves.offsets.size() - 1, " heads and ", moves.size,
            " rows applied to ", kv_heads_, " heads of ", size_, " rows");
  if (width_ > 0) {  // a symmetric format's unused mins have no bytes to move
    const size_t row_bytes = static_cast<size_t>(width_) * at::elementSize(dtype_);
    auto* base = static_cast<uint8_t*>(data_.data_ptr());
    const int64_t capacity = data_.size(1);
    for (int64_t h = 0; h < kv_heads_; ++h) {
      uint8_t* head = base + static_cast<size_t>(h * capacity) * row_bytes;
      for (int64_t i = moves.offsets[h]; i < moves.offsets[h + 1]; ++i) {
        std::memcpy(head + moves.to[i] * row_bytes, head + moves.from[i] * row_bytes, row_bytes);
      }
    }
  }
  size_ = moves.size;
}

at::Tensor RowBuffer::rows() const {
  if (!data_.defined()) return at::empty({kv_heads_, 0, width_}, at::TensorOptions().dtype(dtype_));
  return data_.narrow(1, 0, size_);
}

void RowBuffer::row_as_float(int64_t h, int64_t t, float* out) const {
  rows_as_float(h, t, t + 1, out);
}

void RowBuffer::rows_as_float(int64_t h, int64_t t0, int64_t t1, float* out) const {
  const int64_t n = (t1 - t0) * width_;  // the rows of one head are contiguous
  switch (dtype_) {
    case at::kHalf:
      return simd::to_float(row<at::Half>(h, t0), out, n);
    case at::kBFloat16:
      return simd::to_float(row<at::BFloat16>(h, t0), out, n);
    default:
      return simd::to_float(row<float>(h, t0), out, n);
  }
}

const void* RowBuffer::raw_row(int64_t h, int64_t t) const {
  return static_cast<const char*>(data_.data_ptr()) +
         (h * data_.size(1) + t) * width_ * static_cast<int64_t>(at::elementSize(dtype_));
}

void RowBuffer::prefetch_rows(int64_t h, int64_t t0, int64_t t1) const {
  t1 = std::min(t1, size_);
  if (t1 <= t0) return;
  const int64_t e = static_cast<int64_t>(at::elementSize(dtype_));
  const char* first =
      static_cast<const char*>(data_.data_ptr()) + (h * data_.size(1) + t0) * width_ * e;
  for (int64_t b = 0; b < (t1 - t0) * width_ * e; b += 64) __builtin_prefetch(first + b);
}

uint64_t RowBuffer::bytes() const {
  return static_cast<uint64_t>(kv_heads_ * size_ * width_) * at::elementSize(dtype_);
}

uint64_t RowBuffer::row_bytes() const {
  return static_cast<uint64_t>(kv_heads_ * width_) * at::elementSize(dtype_);
}

float RowBuffer::get_float(int64_t h, int64_t t, int64_t i) const {
  switch (dtype_) {
    case at::kHalf:
      return static_cast<float>(row<at::Half>(h, t)[i]);
    case at::kBFloat16:
      return static_cast<float>(row<at::BFloat16>(h, t)[i]);
    default:
      return row<float>(h, t)[i];
  }
}

void RowBuffer::set_float(int64_t h, int64_t t, int64_t i, float v) {
  switch (dtype_) {
    case at::kHalf:
      mutable_row<at::Half>(h, t)[i] = static_cast<at::Half>(v);
      break;
    case at::kBFloat16:
      mutable_row<at::BFloat16>(h, t)[i] = static_cast<at::BFloat16>(v);
      break;
    default:
      mutable_row<float>(h, t)[i] = v;
  }
}

}  // namespace kvbench
