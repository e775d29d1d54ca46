// Palu on the GPU path: a paged cache of Palu's latents. Each token's key arrives with RoPE
// applied; the cache undoes the rotation at its position and stores the latent h = L^T k_pre
// (L: the layer's key basis from the SVD of W_k), and the value's latent L_v^T v, as fp16 or
// bf16 pages of `rank` values per token and group of KV heads (group 1: per head;
// kv_format.h's kFp16/kBf16 layout at width rank, held by an inner PagedKVCache). Attention:
//   decode   one kernel launch for the batch (kernels/palu_decode.h): keys reconstructed and
//            rotated tile by tile in registers (tensor cores), never written back; values summed
//            in latent space and projected once per query head.
//   prefill  per sequence, every stored token reconstructed (L h, RoPE; L_v h_v) and the block
//            attended over them (the paged cache's prefill path: SDPA on a GPU).
// On the CPU the decode step reconstructs as the prefill does (fp32), unless the kernel path
// is emulated (tests): then the kernel's host reference runs, 16-bit roundings included.
// Positions are slots (pages never move a token), so no positions are stored.
//
// Palu's G-LRD (group g > 1: one latent of rank r per g KV heads, from the SVD of the group's
// stacked W_k rows) keeps kv_heads / g latent heads in the pages; the kernel's block for KV head
// j reads its group's latents and multiplies by its block L_j of the group's basis.
// Rows are stored r rounded up to whole 32-value blocks wide (LatentPagesCache: zero-padded, so
// Palu's default rank 0.7 * 128 = 90 runs in rows of 96 with the rank-90 results).
// What the GPU kernel takes: rank up to 128, head_dim 64 or 128, at most 8 query heads per KV
// head; no retention policy (Palu with a policy runs with attention cpu or reference).
// The constructor says which one does not fit.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "kvbench/kv/latent_pages_cache.h"

namespace kvbench {

class PaluPagedCache final : public LatentPagesCache {
 public:
  // `codec`: a prepared palu codec; `latent_dtype`: kHalf or kBFloat16 (the model's).
  PaluPagedCache(std::shared_ptr<const LowRankCodec> codec, at::ScalarType latent_dtype,
                 int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                 PagedCapacity capacity = {}, at::Device device = at::kCPU,
                 std::shared_ptr<const RetentionPolicy> policy = nullptr,
                 bool kernel_path_on_cpu = false);

  at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                     const std::vector<int64_t>& counts, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v) override;

 private:
  struct Bases {
    at::Tensor key, value;  // [kv_heads, head_dim, r] fp32, where the pools are
    at::Tensor key16;       // the key basis in the latents' dtype (the kernel path's operand)
  };
  // [n, kv_heads, head_dim] keys with RoPE at `positions` ([n] int64) -> pre-RoPE latents
  // [n, kv_heads / group, r], each group's heads projected together (values: positions
  // undefined).
  at::Tensor latents(const at::Tensor& x, const at::Tensor& basis, const at::Tensor& positions);
  // Keys (rotated) and values of tokens [0, tokens) of batch row b: [kv_heads, tokens, head_dim].
  std::pair<at::Tensor, at::Tensor> reconstruct(const PagedKVCache::StepPages& pages, int64_t b,
                                                const Bases& bases, int64_t tokens);
  // Bytes of the 16-bit key bases (kernel path only): the pages' storage and nominal bytes
  // (no positions: they are the slots), the codec's bases, and these.
  uint64_t extra_metadata() const override;
  // The decode kernel (or its host reference) for a batch of single tokens.
  at::Tensor decode(const PagedKVCache::StepPages& pages, const Bases& bases, const at::Tensor& q);
  // The kernel's RoPE tables covering `tokens` positions (grown by doubling), where the pools
  // are.
  void cover(int64_t tokens);
  // cos and sin [tokens, head_dim] of positions [0, tokens) as rope_cos_sin computes them,
  // where the pools are (grown by doubling: a model constant, not KV memory).
  std::pair<at::Tensor, at::Tensor> rope_rows(int64_t tokens);
  // The new rows' positions where the pools are: uploaded once per step (at its first layer,
  // from pinned memory, without waiting for the device), reused by its later layers.
  const at::Tensor& step_positions(const std::vector<int64_t>& positions);

  int64_t group_;  // KV heads per latent
  at::ScalarType latent_dtype_;
  int64_t num_kv_heads_, head_dim_;
  bool kernel_path_;
  at::Tensor inv_freq_;  // [head_dim / 2] float64, where the pools are
  std::vector<Bases> bases_;
  int64_t rope_tiles_ = 0;
  at::Tensor rope_coarse_, rope_fine_;  // palu_decode.h's tables, where the pools are
  at::Tensor rope_cos_, rope_sin_;      // [positions, head_dim] fp32, where the pools are
  std::vector<int64_t> positions_;      // the last step's new positions, and on the device:
  at::Tensor positions_device_;
};

}  // namespace kvbench
