// PyTorch's fused scaled_dot_product_attention, where this libtorch has it (2.x: flash /
// memory-efficient / cuDNN kernels on a GPU); Debian's 1.13 has only private variants, so
// there every call reports it is unavailable and callers take their own path. Used as the
// peer of the decode kernels (kernels suite on cuda) and for fresh prefills on a GPU.
#pragma once

#include <ATen/ATen.h>

namespace kvbench {

// Whether torch_sdpa() can run here (compiled against a libtorch that has SDPA).
bool torch_sdpa_available();

// Attention of q [batch, heads, n, head_dim] over k, v [batch, kv_heads, L, head_dim] (GQA:
// heads a multiple of kv_heads), scale 1/sqrt(head_dim), in the inputs' dtype; `causal`:
// query i sees keys [0, i] (needs n == L). Undefined when !torch_sdpa_available().
at::Tensor torch_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal);

}  // namespace kvbench
