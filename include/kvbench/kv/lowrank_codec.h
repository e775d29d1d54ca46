// Low-rank storage: each token's keys and values stored as coefficients in an orthonormal basis
// U [g * head_dim, r] fitted per layer and per group of g KV heads, x ~ U (U^T x). Two fits:
//   kvproj  key/value projection (Loki's PCA basis, used for storage): per layer and per KV
//           head (g = 1), the top-r right singular vectors of the calibration prompts' keys
//           (RoPE applied, so scores need no rotation: (U^T q) . c) and, separately, values.
//           Calibration prompts run through the model with a full cache in the prepare step.
//   palu    Palu's latent cache: SVD of W_k and W_v per group of g KV heads, W = U S V^T, kept
//           as W ~ L R with L = U_r, R = S_r V_r^T. Since L has orthonormal columns the latent
//           h = R x equals L^T k for the pre-RoPE key k = W x, so the store computes it from
//           the keys the cache hands it: it undoes RoPE at the token's position (an orthogonal
//           rotation), stores h, and at attention reconstructs L h and applies RoPE again.
//           Values: h = L^T v, reconstructed as L h (no RoPE). No calibration data needed.
// The coefficients are payload in the model dtype; Palu's key stores also keep each token's
// position (int32 per group, metadata), which RoPE needs after eviction has moved tokens. The
// bases are shared by every sequence and counted once per cache (shared_bytes). At full rank
// (r = g * head_dim) U is square and orthonormal, so storage is exact up to rounding; below it
// the error of a token x is |x - U U^T x| <= |x|, which for Palu's factorisation totals
// sqrt(sum of the dropped squared singular values) over W's columns.
// The fused path never reconstructs the cache: kvproj scores in latent space against U^T q,
// and both accumulate values in latent space, projecting the [rows, r] sum back once; Palu's
// keys are reconstructed block by block (RoPE depends on the position) into a scratch buffer.
// A group g > 1 shares one latent between g heads, so retention must keep the same tokens for
// the heads of a group (else retain throws).
#pragma once

#include <memory>
#include <vector>

#include "kvbench/kv/codec.h"

namespace kvbench {

enum class LowRankKind { kProjection, kPalu };
class RopeTable;

struct LowRankParams {
  LowRankKind kind = LowRankKind::kPalu;
  int64_t rank = 0;             // r; 0: round(rank_ratio * g * head_dim), at least 1
  double rank_ratio = 0.7;      // used when rank is 0
  int64_t group = 1;            // g: KV heads per group (kvproj: 1)
  CalibrationSpec calibration;  // kvproj only
};

class LowRankCodec final : public Codec {
 public:
  // Unprepared: needs_preparation() until prepare() fits the bases.
  LowRankCodec(const LowRankParams& params, at::ScalarType dtype);
  std::string name() const override;
  nlohmann::json params() const override;
  // Stores need the layer's basis: these throw; the cache calls make_layer_*_store.
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_layer_key_store(int64_t layer, int64_t kv_heads,
                                                   int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_layer_value_store(int64_t layer, int64_t kv_heads,
                                                     int64_t head_dim) const override;
  // Validates kv_heads and head_dim against group and rank (throws Error naming the key).
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;
  bool can_drop_tokens() const override { return true; }
  bool prefill_reads_stored() const override { return true; }

  bool needs_preparation() const override { return !prepared_; }
  CalibrationSpec calibration() const override;
  std::shared_ptr<const Codec> prepare(const PreparationInput& input) const override;
  StorageBytes shared_bytes() const override;
  StorageBytes shared_nominal() const override;
  // What shared_nominal() is once fitted for a model of these dimensions (the keys' and values'
  // fp32 bases at every layer), known before the fit (plans, dry runs).
  StorageBytes shared_nominal_for(int64_t num_layers, int64_t kv_heads, int64_t head_dim) const;

  LowRankKind kind() const { return p_.kind; }
  int64_t group() const { return p_.group; }
  // r for groups of g heads of head_dim channels.
  int64_t rank_for(int64_t head_dim) const;
  // The fitted bases of `layer`: [kv_heads / g, g * head_dim, r] fp32 (prepared codecs only).
  const at::Tensor& key_basis(int64_t layer) const;
  const at::Tensor& value_basis(int64_t layer) const;
  // Palu: the model's RoPE frequencies [head_dim / 2] float64 (prepared codecs; else undefined).
  const at::Tensor& rope_inv_freq() const { return inv_freq_; }

 private:
  void check_prepared(int64_t layer, int64_t kv_heads, int64_t head_dim) const;

  LowRankParams p_;
  at::ScalarType dtype_;
  bool prepared_ = false;
  int64_t num_layers_ = 0, kv_heads_ = 0, head_dim_ = 0;
  std::vector<at::Tensor> key_basis_, value_basis_;  // per layer
  std::shared_ptr<RopeTable> rope_table_;            // Palu: cos/sin per position, shared
  at::Tensor inv_freq_;                              // Palu: [head_dim / 2] float64
};

}  // namespace kvbench
