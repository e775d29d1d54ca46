#include "kvbench/kv/token_store.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kvbench/core/error.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/simd.h"

namespace kvbench {
namespace {

// Tokens decoded at a time: 32 rows at head_dim 128 are 16 KiB of fp32, so the decoded block
// stays in L1 between being written and being read by the tile kernel.
constexpr int64_t kBlock = 32;

// Per-thread scratch for one decoded block, reused across calls so the hot path never
// allocates.
float* scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(static_cast<size_t>(floats));
  return buffer.data();
}

}  // namespace

std::shared_ptr<const Codec> Codec::prepare(const PreparationInput&) const {
  throw Error("codec '" + name() + "' needs no preparation");
}

RowMoves row_moves(const at::Tensor& kept_in, int64_t rows) {
  const at::Tensor kept = kept_in.to(at::kLong).contiguous();
  KVB_CHECK(kept.dim() == 2 && kept.size(1) <= rows, "row moves: keep ", kept.sizes(), " of ", rows,
            " rows");
  const int64_t heads = kept.size(0), n = kept.size(1);
  RowMoves m;
  m.size = n;
  m.offsets.push_back(0);
  std::vector<char> keep(static_cast<size_t>(rows));
  for (int64_t h = 0; h < heads; ++h) {
    std::fill(keep.begin(), keep.end(), 0);
    const int64_t* idx = kept.data_ptr<int64_t>() + h * n;
    for (int64_t i = 0; i < n; ++i) {
      KVB_CHECK(idx[i] >= 0 && idx[i] < rows && !keep[idx[i]], "row moves: kept row ", idx[i],
                " of head ", h, " is out of range or repeated");
      keep[idx[i]] = 1;
    }
    // Holes below n pair up with kept rows at or above n: there are as many of each.
    int64_t hole = 0;
    for (int64_t r = n; r < rows; ++r) {
      if (!keep[r]) continue;
      while (keep[hole]) ++hole;
      m.from.push_back(r);
      m.to.push_back(hole++);
    }
    m.offsets.push_back(static_cast<int64_t>(m.from.size()));
  }
  return m;
}

at::Tensor apply_row_moves(const at::Tensor& t, const RowMoves& moves) {
  KVB_CHECK(t.is_contiguous(), "row moves: the tensor must be contiguous");
  const int64_t heads = t.size(0), rows = t.size(1);
  KVB_CHECK(static_cast<int64_t>(moves.offsets.size()) == heads + 1 && moves.size <= rows,
            "row moves: ", moves.offsets.size() - 1, " heads for a tensor of ", t.sizes());
  const size_t row_bytes =
      static_cast<size_t>(t.numel() / std::max<int64_t>(1, heads * rows)) * t.element_size();
  auto* base = static_cast<uint8_t*>(t.data_ptr());
  for (int64_t h = 0; h < heads; ++h) {
    uint8_t* head = base + static_cast<size_t>(h * rows) * row_bytes;
    for (int64_t i = moves.offsets[h]; i < moves.offsets[h + 1]; ++i) {
      std::memcpy(head + moves.to[i] * row_bytes, head + moves.from[i] * row_bytes, row_bytes);
    }
  }
  return t.narrow(1, 0, moves.size);
}

void TokenStore::retain(const RowMoves&) {
  throw Error("this storage format cannot drop tokens in place (its codes span tokens)");
}

void TokenStore::dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1,
                     float* scores, int64_t stride) const {
  const int64_t d = head_dim();
  float* k = scratch(kBlock * d);
  for (int64_t b = t0; b < t1; b += kBlock) {
    const int64_t e = std::min(t1, b + kBlock);
    decode_rows(head, b, e, k);
    simd::scores_tile(k, q, rows, e - b, d, scores + (b - t0), stride);
  }
}

void TokenStore::accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                            int64_t stride, float* out) const {
  const int64_t d = head_dim();
  float* v = scratch(kBlock * d);
  for (int64_t b = t0; b < t1; b += kBlock) {
    const int64_t e = std::min(t1, b + kBlock);
    decode_rows(head, b, e, v);
    simd::weighted_sum_tile(v, p + (b - t0), rows, e - b, d, stride, out);
  }
}

void TokenStore::dot_quantized(int64_t, const simd::Q8Rows&, int64_t, int64_t, int64_t, float*,
                               int64_t) const {
  throw Error("this storage format has no integer key kernel (quantized_query() is false)");
}

}  // namespace kvbench
