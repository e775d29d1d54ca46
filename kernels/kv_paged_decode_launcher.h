// Dequantizes a sequence's stored tokens on the GPU (decode_paged_token for every token and
// KV head, one thread per channel group): what prefill attention reads where the decode
// kernel, which takes one query per sequence, does not apply. All pointers are device
// pointers; the result is exact (the same arithmetic as the host decoder).
#pragma once

#include <cuda_runtime_api.h>

#include "kv_append.h"

namespace kvbench::kernels {

// Tokens [0, tokens) of the sequence whose block-table row is `pages` and whose ring/scale
// row is `seq_row`, into k_out and v_out, each [kv_heads, tokens, head_dim] fp32.
cudaError_t dequantize_paged(const PagedKvStore& store, const int* pages, int kv_heads,
                             int head_dim, int seq_row, int tokens, float* k_out, float* v_out,
                             cudaStream_t stream);

}  // namespace kvbench::kernels
