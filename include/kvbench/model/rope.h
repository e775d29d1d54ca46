// Rotary position embedding (Hugging Face rotate_half layout), shared by the transformer and
// by storage formats that reconstruct pre-RoPE keys and rotate them at their positions (Palu).
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace kvbench {

// cos and sin of the RoPE angles of `positions` ([tokens] int64): angles position * inv_freq in
// float64 ([head_dim / 2] float64), laid out as cat(freqs, freqs), then cast to fp32:
// [tokens, head_dim] each.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& positions,
                                               const at::Tensor& inv_freq);
// Rotates pairs (i, i + d/2): x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
//   x: [tokens, heads, d]; cos, sin: [tokens, d]. With -sin it undoes the rotation (the
//   rotation is orthogonal).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace kvbench
