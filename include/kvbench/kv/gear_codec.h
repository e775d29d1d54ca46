// GEAR (Kang et al. 2024): each compressed block of one KV head's tokens X [n, head_dim] is
// stored as X ~ D + L + S.
//   S: outliers. The s/2 largest and s/2 smallest values of each vector are kept exactly (in
//      the model dtype, with their index): keys per channel (a vector = one channel over the
//      block's tokens, int32 token indices), values per token (a vector = one token's channels,
//      int16 channel indices). k = round(s * length / 2) per side, at most length / 2.
//   D: KIVI's min-max quantization (shared code, minmax_quant.h) of X - S: keys per channel in
//      groups of G tokens (the last group of a block may be shorter), values per token in
//      groups of min(G, head_dim) channels (GEAR's G = 64 on a head_dim 32 model: one group per
//      token). Outlier positions are left out of their group's min and max.
//   L: rank-r approximation of the residual E = X - S - D (zero at outlier positions) by power
//      iteration from a seeded random P [head_dim, r]: repeat Q = qr(E P), P = E^T Q; stored as
//      the factors Q [n, r] and P [head_dim, r] (L = Q P^T = Q Q^T E), in the model dtype.
// Reconstruction: outliers exactly; every other value D + clamp(L, -s_q/2, s_q/2), where s_q
// is its group's quantization step. The true value lies in that quantization cell, so the clamp
// can only bring each value closer (it never undoes L's gain) and bounds the error by one step
// whatever the block length; without it a rank-r projection has no per-value bound.
// Streaming: the newest tokens stay exact in the model dtype (the buffer); whenever it holds at
// least `buffer` tokens, the largest multiple of `buffer` tokens is compressed as one block —
// so a prefill is one block (rank_prefill) and decode re-compresses every `buffer` steps (one
// block of `buffer` tokens, rank_decode). A block formed by an append of more than one token
// uses rank_prefill. Keys follow KIVI's rule exactly (T - T mod R quantized); values use the
// same block rule, not KIVI's sliding window, because L needs whole blocks of exact values.
// With s = 0 and r = 0 the keys equal KIVI's (bits, G, R = buffer; buffer a multiple of G) and
// every compressed value equals KIVI's per-token quantization of it.
#pragma once

#include <cstdint>
#include <utility>

#include "kvbench/kv/codec.h"

namespace kvbench {

struct GearParams {
  int bits = 2;
  int64_t group = 64;
  double outlier_ratio = 0.02;  // s
  int64_t rank_prefill = 4;
  int64_t rank_decode = 2;
  int64_t power_iters = 3;
  int64_t buffer = 64;  // streaming buffer: re-compress every `buffer` decode steps
  uint64_t seed = 0;    // of the power iteration's random start
};

class GearCodec final : public Codec {
 public:
  GearCodec(const GearParams& params, at::ScalarType model_dtype);
  std::string name() const override { return "gear"; }
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  // The formula depends on how tokens arrived (one block per append that fills the buffer, each
  // with its own factors and key groups). It assumes all `tokens` came in one append (a
  // prefill): then it equals the measured bytes exactly. After decode steps the measured bytes
  // exceed it by the per-block overhead of the decode blocks (factors P, partial key groups).
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  // A prefill of `first` tokens (one block of its whole buffers at rank_prefill), then a block
  // at rank_decode every `buffer` tokens; the rest exact. What the store measures after such
  // appends (nominal_bytes(t) is the case first = t).
  StorageBytes sequence_nominal_bytes(int64_t first, int64_t tokens, int64_t kv_heads,
                                      int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;

  const GearParams& gear_params() const { return p_; }
  at::ScalarType model_dtype() const { return dtype_; }

 private:
  GearParams p_;
  at::ScalarType dtype_;
};

// Outliers GEAR keeps on each side of a vector of `length` values: round(ratio * length / 2),
// at most length / 2.
int64_t gear_outliers_per_side(double ratio, int64_t length);

// The seed of the power iteration's random start for a store's block number `block_index`.
uint64_t gear_block_seed(const GearParams& params, uint64_t block_index);
// That start: [batch, d, rank] fp32 from a CPU generator seeded with `seed` (on the CPU).
at::Tensor gear_random_start(int64_t batch, int64_t d, int64_t rank, uint64_t seed);

// Rank-`rank` factors of each matrix e[i] ([batch, n, d] fp32) by `iters` power iterations from
// a random start seeded by `seed`: returns {q [batch, n, rank] with orthonormal columns,
// p [batch, d, rank]} with e ~ q p^T = q q^T e, so ||e - q p^T|| <= ||e|| (a projection; a
// column of q may be zero where e P has lower rank than `rank`).
// rank <= min(n, d). Runs where `e` is (the random start is drawn on the CPU, then moved).
std::pair<at::Tensor, at::Tensor> gear_low_rank(const at::Tensor& e, int64_t rank, int64_t iters,
                                                uint64_t seed);
// The same from a given start p [batch, d, rank] fp32, where e is.
std::pair<at::Tensor, at::Tensor> gear_low_rank(const at::Tensor& e, const at::Tensor& start,
                                                int64_t iters);
// The power iteration's QR: each matrix of y ([batch, n, r], r <= n) with its columns made
// orthonormal (kernels/thin_qr.h: Gram-Schmidt twice, a column dependent on the earlier ones
// zero), where y is: one kernel launch on a GPU (torch's linalg_qr builds each matrix's Q with
// its own cuSOLVER call there), its host reference on the CPU. A new fp32 tensor.
at::Tensor orthonormal_columns(const at::Tensor& y);
// The same in place, for a contiguous fp32 q the caller owns.
void orthonormalize(at::Tensor& q);

}  // namespace kvbench
