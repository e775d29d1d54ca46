// Reference decode attention over a full-precision cache, in plain libtorch ops. It is the
// oracle every fused or compressed attention path is compared against, and what the
// `kernels` suite times as the full-precision baseline.
#pragma once

#include <ATen/ATen.h>

namespace kvbench {

// One decode step with grouped-query attention.
//   q: [batch, kv_heads, group, head_dim]   (group = query heads per KV head)
//   k: [batch, kv_heads, tokens, head_dim]
//   v: [batch, kv_heads, tokens, head_dim]
// returns [batch, kv_heads, group, head_dim]: softmax(q k^T * scale) v, computed in q's dtype.
at::Tensor decode_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      double scale);

// Attention of a block of n new queries over L cached tokens, the last n of which are the
// block's own: query i sees keys [0, L - n + i] (causal within the block; n = 1 is decode).
// Query head h reads KV head h / group (the Hugging Face repeat_kv layout).
//   q: [num_heads, n, head_dim]   k, v: [num_kv_heads, L, head_dim]   (fp32)
// returns [num_heads, n, head_dim].
at::Tensor block_attention_reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     double scale);

}  // namespace kvbench
