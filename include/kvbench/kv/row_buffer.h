// A growable per-head row buffer: [kv_heads, capacity, width] of one dtype, appended along the
// token axis with amortised doubling. The common storage under every codec's TokenStore.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kvbench/kv/token_store.h"

namespace kvbench {

class RowBuffer {
 public:
  RowBuffer(int64_t kv_heads, int64_t width, at::ScalarType dtype);
  // Makes room for `extra` more rows and returns the view of them: [kv_heads, extra, width].
  at::Tensor append(int64_t extra);
  // Capacity for `rows` rows in all, allocated once (no doubling up to there); never shrinks.
  void reserve(int64_t rows);
  // Capacity for exactly max(rows, size()) rows: gives back the room an eviction left (or grows
  // to it without doubling). Reallocates only when the capacity differs.
  void fit(int64_t rows);
  // Moves rows as `moves` says and shrinks to moves.size rows per head; capacity is kept for
  // later appends. No row is re-encoded.
  void retain(const RowMoves& moves);
  // The stored rows: [kv_heads, size, width].
  at::Tensor rows() const;
  int64_t size() const { return size_; }
  int64_t width() const { return width_; }
  // Bytes of the stored rows (not of spare capacity).
  uint64_t bytes() const;
  // Bytes of the whole buffer, spare capacity included.
  uint64_t allocated_bytes() const { return data_.defined() ? uint64_t(data_.nbytes()) : 0; }
  // Bytes of one row over all heads (width x element size x kv_heads).
  uint64_t row_bytes() const;
  // Row `t` of head `h`, for kernels: `width` elements of T.
  template <typename T>
  const T* row(int64_t h, int64_t t) const {
    return data_.data_ptr<T>() + (h * data_.size(1) + t) * width_;
  }
  // Row `t` of head `h` as untyped bytes (kernels that convert the dtype themselves).
  const void* raw_row(int64_t h, int64_t t) const;
  // Row `t` of head `h` converted to fp32 (float32, float16 or bfloat16 storage).
  void row_as_float(int64_t h, int64_t t, float* out) const;
  // Element i of row t of head h as fp32, and set from fp32 (rounded to the dtype): for formats
  // that place tokens inside shared rows (KIVI's tiles).
  float get_float(int64_t h, int64_t t, int64_t i) const;
  void set_float(int64_t h, int64_t t, int64_t i, float v);
  // Rows [t0, t1) of head `h` converted to fp32: [t1 - t0, width].
  void rows_as_float(int64_t h, int64_t t0, int64_t t1, float* out) const;
  // Software prefetch of rows [t0, min(t1, size)) of head `h` (e.g. a kernel's next chunk).
  void prefetch_rows(int64_t h, int64_t t0, int64_t t1) const;
  template <typename T>
  T* mutable_row(int64_t h, int64_t t) {
    return data_.data_ptr<T>() + (h * data_.size(1) + t) * width_;
  }

 private:
  // Storage for exactly `rows` rows (>= size_), the held rows copied over.
  void reallocate(int64_t rows);

  int64_t kv_heads_, width_;
  at::ScalarType dtype_;
  at::Tensor data_;  // [kv_heads, capacity, width]
  int64_t size_ = 0;
};

}  // namespace kvbench
