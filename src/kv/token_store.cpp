#include "kvbench/kv/token_store.h"

#include <algorithm>
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

void TokenStore::retain(const at::Tensor&) {
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

}  // namespace kvbench
