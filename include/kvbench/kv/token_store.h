// Storage of one side (K or V) of one layer of one sequence, all KV heads, in some format.
// A codec makes the stores; the cache appends tokens to them; attention reads them either
// through dequantize() (the reference path) or through the fused dot()/accumulate() kernels,
// which read the stored format directly and never materialise a dequantized copy.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/kv/fused_kernels.h"

namespace kvbench {

// Bytes of K/V state: codes (payload) and everything that describes them (scales, mins,
// residual buffers count as payload in the model dtype where they hold tokens).
struct StorageBytes {
  uint64_t payload = 0;
  uint64_t metadata = 0;
  // The part of payload + metadata that holds no token, allocated only because storage comes in
  // units (the unfilled tail of a sequence's newest page, a KIVI ring's empty slots): what a
  // measured size may exceed the method's formula by without anything being wrong.
  uint64_t padding = 0;
  uint64_t total() const { return payload + metadata; }
  // The bytes that hold tokens: total() without the padding.
  uint64_t held() const { return total() - std::min(padding, total()); }
  StorageBytes& operator+=(const StorageBytes& o) {
    payload += o.payload;
    metadata += o.metadata;
    padding += o.padding;
    return *this;
  }
  nlohmann::json to_json() const {
    return {{"payload", payload}, {"metadata", metadata}, {"total", total()}, {"padding", padding}};
  }
};

// How a store drops tokens in place: per KV head, the kept rows at or beyond the new size move
// into the holes the dropped rows leave below it (a swap-remove). Dropping m of n rows moves at
// most m rows, so eviction during decode costs O(dropped tokens), never a compaction of the
// whole store — but rows stop being in arrival order; the cache tracks each row's position.
struct RowMoves {
  int64_t size = 0;               // rows per head afterwards (the kept count)
  std::vector<int64_t> offsets;   // [kv_heads + 1]: head h's moves are [offsets[h], offsets[h+1])
  std::vector<int64_t> from, to;  // row from[i] of its head moves to row to[i]
  int64_t moved() const { return static_cast<int64_t>(from.size()); }
};
// The moves that keep rows `kept` ([kv_heads, n] int64, distinct and < rows per head, any order;
// the same n for every head) of stores holding `rows` rows per head.
RowMoves row_moves(const at::Tensor& kept, int64_t rows);
// Applies `moves` in place to a contiguous per-row tensor [kv_heads, rows, ...] (positions,
// scores) and returns the view of its first moves.size rows per head.
at::Tensor apply_row_moves(const at::Tensor& t, const RowMoves& moves);

class TokenStore {
 public:
  virtual ~TokenStore() = default;

  // Appends n tokens.  x: [kv_heads, n, head_dim] fp32.
  virtual void append(const at::Tensor& x) = 0;
  // Room for `total` tokens in all, the first `prompt` of them appended at once, allocated
  // once: the store sizes its buffers so that appends up to there never double them
  // (KVCache::reserve). A hint (appends past it still grow); default: nothing.
  virtual void reserve(int64_t prompt, int64_t total) { (void)prompt, (void)total; }
  // Room for exactly `tokens` tokens (at least those held), after an eviction dropped some: the
  // spare rows go back (KVCache under a retention policy). A hint; default: nothing. Stores
  // that can drop tokens (retain) implement it.
  virtual void fit(int64_t tokens) { (void)tokens; }
  virtual int64_t size() const = 0;
  // Drops tokens in place by moving rows (see RowMoves), without re-encoding any: the retention
  // policy's eviction. Per-token formats (identity, block quantization, fp8) support it; formats
  // whose codes span tokens (KIVI's key groups, GEAR's blocks) cannot drop a token without
  // re-quantizing, keep this default (which throws) and report can_drop_tokens() false through
  // their codec.
  virtual void retain(const RowMoves& moves);
  // Every stored token reconstructed: [kv_heads, size, head_dim] fp32. The reference path.
  virtual at::Tensor dequantize() const = 0;

  virtual int64_t head_dim() const = 0;
  // The one format-specific read of the fused path: rows [t0, t1) of `head` reconstructed
  // into out [t1 - t0, head_dim] fp32, from the stored codes, scales and windows.
  virtual void decode_rows(int64_t head, int64_t t0, int64_t t1, float* out) const = 0;

  // Fused key read: scores[r * stride + (t - t0)] = sum_d q[r * head_dim + d] * K[head, t, d]
  // for r < rows and t in [t0, t1). Decodes the block into a cache-resident buffer and runs
  // the register-tiled dot products; formats may override with kernels on the codes.
  virtual void dot(int64_t head, const float* q, int64_t rows, int64_t t0, int64_t t1,
                   float* scores, int64_t stride) const;
  // Fused value read: out[r * head_dim + d] += sum_t p[r * stride + (t - t0)] * V[head, t, d].
  virtual void accumulate(int64_t head, const float* p, int64_t rows, int64_t t0, int64_t t1,
                          int64_t stride, float* out) const;
  // Integer key read, for formats that score against a query quantized to int8 blocks
  // (simd::quantize_q8) once per decode step: when quantized_query() is true the fused
  // attention calls dot_quantized() instead of dot(), with `q` pointing at the head's first
  // query row. The scores then differ from dot()'s by the query's rounding only:
  // |delta| <= sum_b (d_qb / 2) sum_{i in b} |k_i| (see docs/methods.md).
  virtual bool quantized_query() const { return false; }
  virtual void dot_quantized(int64_t head, const simd::Q8Rows& q, int64_t rows, int64_t t0,
                             int64_t t1, float* scores, int64_t stride) const;

  // Bytes held for the `size()` stored tokens, measured from the tensors' element sizes
  // (capacity reserved for future tokens is not counted).
  virtual StorageBytes bytes() const = 0;
  // Bytes of the store's tensors as allocated, rows kept for tokens to come included
  // (KVCache::allocated_bytes). Default: bytes().total().
  virtual uint64_t allocated_bytes() const { return bytes().total(); }
  // The method's formula for what this store holds, for formats whose layout depends on how
  // tokens arrived (GEAR: one block per compression, each with its own factors), computed from
  // token counts alone, never from the tensors. Empty: the codec's nominal_bytes(size()) applies.
  virtual std::optional<StorageBytes> history_nominal() const { return std::nullopt; }
};

}  // namespace kvbench
