// GEAR's compressed blocks as tensors, made and read with ATen ops only, so the same code runs
// where the tensors are (the GPU path's cache keeps them in device memory; the tests run it on
// the CPU). The format and the rules are the CPU codec's (gear_codec.h, methods.md): the same
// outlier choice (ties by position), the same min-max codes, scales and mins rounded to the
// model dtype, the same power iteration from the same seeded start, and the same rule that
// stores zero factors for a head whose rounded factors would not reduce the residual. The
// layout is kernels/gear_decode.h's GearSide, which the decode kernel reads in place. On the CPU
// the blocks equal the CPU store's to the bit (tested); on a GPU, the multiplies' and other
// summation orders can move a factor by one unit of the model dtype (the QR, kernels/thin_qr.h,
// is the host reference's to the bit) (and, for a head whose
// factors barely help, the keep-or-zero choice with it); codes, scales and outliers come from
// the same IEEE operations.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/token_store.h"

namespace kvbench {

// One side (keys or values) of one compressed block of n tokens, every KV head.
struct GearSideTensors {
  at::Tensor codes;  // [kv_heads, n, head_dim * bits / 8] uint8
  at::Tensor scales,
      mins;  // keys [kv_heads, ceil(n / G), head_dim]; values [kv_heads, n, head_dim / G_v]
  at::Tensor outlier_values;  // keys [kv_heads, 2k, head_dim]; values [kv_heads, n, 2k_v]
  at::Tensor outlier_index;   // the same shape: int32 token within the block / int16 channel
  at::Tensor q, p;            // [kv_heads, n, rank], [kv_heads, rank, head_dim] (P^T)
  int64_t k = 0;              // outliers per side of each vector
  // Bytes held: codes as payload, the rest as metadata.
  StorageBytes bytes() const;
};

// Compresses x [kv_heads, n, head_dim] (fp32 holding model-dtype values) as GEAR's block
// number `block_index` of its store: keys (is_key) or values, with factors of rank `rank`
// (already capped at min(n, head_dim); 0: none). Every tensor in the model dtype (`dtype`)
// but the codes and indices, where x is. `start`: the power iteration's random start
// ([kv_heads, head_dim, rank] fp32 where x is, gear_random_start of this block index), which a
// caller on a GPU keeps to save a host-to-device copy per block; undefined: drawn here.
GearSideTensors gear_compress(const GearParams& params, at::ScalarType dtype, bool is_key,
                              const at::Tensor& x, int64_t rank, uint64_t block_index,
                              const at::Tensor& start = at::Tensor());

// The block's values: [kv_heads, n, head_dim] fp32, where its tensors are.
at::Tensor gear_reconstruct(const GearParams& params, bool is_key, const GearSideTensors& side);

// GEAR's formula for one side of a block of n tokens with rank-r factors and k outliers per
// side (the CPU store's history_nominal, per block), all `kv_heads`.
StorageBytes gear_block_nominal(const GearParams& params, at::ScalarType dtype, bool is_key,
                                int64_t n, int64_t rank, int64_t k, int64_t kv_heads,
                                int64_t head_dim);

}  // namespace kvbench
