// The fused CPU decode attention: reads K and V through their TokenStores' dot() and
// accumulate() kernels, so compressed formats are read directly and no dequantized copy of
// the cache is ever made. Work is split over (KV head, token chunk) pairs across threads and
// the chunks are merged with the usual running-max softmax (split-K "flash decoding").
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "kvbench/kv/token_store.h"

namespace kvbench {

// Token ranges [t0, t1) of the stored rows to read, per KV head: attention over a selection
// (Quest's pages) read in place, without gathering the rows into a copy.
using TokenRuns = std::vector<std::vector<std::array<int64_t, 2>>>;

// One decode step for one sequence, over every stored token, or only over `runs` when given.
//   q: [num_heads, 1, head_dim] fp32 (query head h reads KV head h / group)
//   returns [num_heads, 1, head_dim] fp32
at::Tensor cpu_decode_attention(const at::Tensor& q, const TokenStore& keys,
                                const TokenStore& values, int64_t kv_heads, double scale,
                                const TokenRuns* runs = nullptr);

}  // namespace kvbench
