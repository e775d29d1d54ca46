// kvproj on the GPU path: a paged cache of latent coefficients. Each token's key (RoPE applied)
// and value are stored as their coefficients c = U^T x in the codec's fitted bases (fp16 or
// bf16 pages, r values per token and KV head group instead of head_dim), and attention runs in
// the latent space with the paged cache's own kernels, nothing reconstructed per token:
//   scores  (U_j^T q) . c_t / sqrt(head_dim)   (U_j: the query's KV head rows of the basis)
//   output  U_j^v (sum_t p_t c_t^v)            (projected back once per query)
// So the inner PagedKVCache holds kv_heads / g "heads" of width r, and a query head attends
// the latent head of its KV head's group, which is the GQA mapping the paged kernels already
// use. Rows are stored `width` wide (LatentPagesCache: r zero-padded to whole 32-value blocks,
// on a GPU to the decode kernels' 64 or 128). The latent query is pre-scaled by
// sqrt(width / head_dim) because the inner cache scales scores by 1 / sqrt(width). Everything the
// paged cache does applies unchanged: pages, batched decode steps in one launch, retention by index
// (StreamingLLM, SnapKV, PyramidKV, whose window scores are then taken against the stored latent
// keys: the scores of the reconstructed keys U c).
//
// This reads the same bytes per token as kernels/latent_decode.h (r coefficients), through
// the paged tensor-core decode kernel instead of a contiguous per-sequence layout.
// Palu stores keys before RoPE (a rotation per position at read time): PaluPagedCache.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "kvbench/kv/latent_pages_cache.h"

namespace kvbench {

class LatentPagedCache final : public LatentPagesCache {
 public:
  // `codec`: a prepared kvproj codec; `coef_dtype`: the coefficients' storage (kHalf or
  // kBFloat16: the paged fp16/bf16 formats). Throws Error naming what does not fit (Palu, an
  // unprepared codec, a rank the pages or the GPU kernels cannot take).
  LatentPagedCache(std::shared_ptr<const LowRankCodec> codec, at::ScalarType coef_dtype,
                   int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                   PagedCapacity capacity = {}, at::Device device = at::kCPU,
                   std::shared_ptr<const RetentionPolicy> policy = nullptr,
                   bool kernel_path_on_cpu = false);  // tests: see PagedKVCache

  at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                     const std::vector<int64_t>& counts, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v) override;
  // On a GPU, the coefficients' fp16/bf16: the model's activations go to the projections as
  // they are.
  at::ScalarType attend_dtype() const override {
    return device().is_cuda() ? coef_dtype_ : at::kFloat;
  }

 private:
  // Per layer, where the pools are, fp32 (key and value: stored_basis).
  struct Bases {
    at::Tensor key, value;  // [kv_heads / g, g * head_dim, r]: coefficients of a group's rows
    at::Tensor query;       // [kv_heads, head_dim, r]: each KV head's key rows, pre-scaled
    at::Tensor output;      // [kv_heads, r, head_dim]: each KV head's value rows, transposed
  };
  // x [n, kv_heads, head_dim] -> coefficients [n, kv_heads / g, r] in `basis`.
  at::Tensor coefficients(const at::Tensor& x, const at::Tensor& basis) const;
  // Per KV head, rows [n, kv_heads, per, a] times `m` [kv_heads, a, b] -> [n, kv_heads, per, b].
  static at::Tensor per_head(const at::Tensor& rows, const at::Tensor& m);
  // A block on the kernel path: its query, keys and values projected in one launch
  // (kernels/head_project.h), the latent output back to head_dim in another.
  at::Tensor attend_projected(int64_t layer, const std::vector<int64_t>& seqs,
                              const std::vector<int64_t>& counts, const at::Tensor& q,
                              const at::Tensor& k, const at::Tensor& v, at::ScalarType out_dtype);

  // The bases' copies (extra_metadata_): latent_bases_bytes, measured.
  uint64_t copies_bytes() const;

  int64_t num_kv_heads_, head_dim_, group_;
  at::ScalarType coef_dtype_;
  std::vector<Bases> bases_;
};

}  // namespace kvbench
