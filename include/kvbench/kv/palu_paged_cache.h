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
// head. The constructor says which one does not fit.
//
// Under a retention policy the pages keep every token where it was written and each (sequence,
// layer) keeps its retained positions in the inner cache (PagedKVCache::retain: listed
// positions per latent head and a tail; pages freed once nothing retains a token in them), and
// the decode kernel reads the kept tokens by index, each rotated at its own position (its
// slot): no compaction copy. Selection as the reference cache makes it: SnapKV and PyramidKV
// from the prefill's window scores over the full-precision keys; StreamingLLM from positions,
// at the prefill and (with "evict": "decode") before each decode token attends; H2O, TOVA and
// ScissorHands from their record of every step's attention (AttentionRecord): the prefill's
// over the reconstructed keys, each decode step's from the scores the decode kernel writes (on
// the CPU path: from the reconstructed keys) (the token attends everything held, its attention
// is recorded, then the layer shrinks).
// Not Quest, nor cache positions. With group g > 1 the heads of a group share one latent, so
// the policy must keep the same tokens for all of them (as the reference's store requires).
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/latent_pages_cache.h"
#include "kvbench/kv/retention_policy.h"
#include "kvbench/kv/steady_buffers.h"

namespace kvbench {

// Throws Error when PaluPagedCache cannot run `policy` (null and FullRetention are fine): Quest
// or cache positions.
void check_palu_paged_policy(const RetentionPolicy* policy);

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
  // On a GPU, the latents' fp16/bf16 (the model's): the new keys and values go to the fused
  // projections as they come, and a decode step's queries and outputs cross the decode kernel
  // in that dtype (PaluProblem::q16, out16), so no layer converts them. Queries in that dtype
  // give outputs in it on any device (fp32: fp32).
  at::ScalarType attend_dtype() const override {
    return device().is_cuda() ? latent_dtype_ : at::kFloat;
  }
  void remove_sequence(int64_t seq) override;
  // Its own selections and the inner cache's list copies (settle()).
  double retention_seconds() const override { return retention_s_ + latent_.retention_seconds(); }
  // The latent pages' lists and this cache's attention records.
  uint64_t retention_bytes() const override;
  double device_wait_seconds() const override { return waited_s_ + latent_.device_wait_seconds(); }
  // As LatentPagesCache's, but the policy is this cache's (its latent pages have none): the
  // prompts only under one. The RoPE tables are built for the longest total here (positions
  // go on under eviction too), so no step grows them.
  void reserve(const std::vector<SequenceTokens>& seqs) override;
  // LatentPagesCache's, and the RoPE tables built for `longest` tokens.
  void reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) override;
  // Positions the RoPE rows cover, and (kernel path) the tiles of its tables (tests).
  int64_t rope_positions() const { return rope_cos_.defined() ? rope_cos_.size(0) : 0; }
  int64_t rope_tiles() const { return rope_tiles_; }

 private:
  struct Bases {
    at::Tensor key, value;  // [kv_heads, head_dim, width] fp32, where the pools are (stored_basis)
    at::Tensor key16;       // the key basis in the latents' dtype (the kernel path's operand)
  };
  // [n, kv_heads, head_dim] keys with RoPE at `positions` ([n] int64) -> pre-RoPE latents
  // [n, kv_heads / group, r], each group's heads projected together (values: positions
  // undefined).
  at::Tensor latents(const at::Tensor& x, const at::Tensor& basis, const at::Tensor& positions);
  // The same for a block's keys and values in one launch (kernels/head_project.h, the keys
  // rotated back on the way in), in the latents' dtype: the kernel path's blocks of at most
  // kProjectedRows rows.
  std::pair<at::Tensor, at::Tensor> fused_latents(const at::Tensor& k, const at::Tensor& v,
                                                  const Bases& bases, const at::Tensor& positions);
  // Keys (rotated) and values of tokens [0, tokens) of batch row b: [kv_heads, tokens, head_dim].
  std::pair<at::Tensor, at::Tensor> reconstruct(const PagedKVCache::StepPages& pages, int64_t b,
                                                const Bases& bases, int64_t tokens);
  // Bytes of the bases' copies (latent_bases_bytes, measured: the fp32 ones unless they are the
  // codec's tensors, the 16-bit key bases on the kernel path). The pages' storage and nominal
  // bytes are the pages (no positions: they are the slots), the codec's bases, and these.
  uint64_t copies_bytes() const;
  // The decode kernel (or its host reference) for a batch of single tokens, over the tokens
  // each sequence retains at `layer`; with `scores`, also each attended token's scaled score
  // ([batch, q_heads, >= every count] fp32, kept order; for the policy's record).
  // `tails` (when not null and the kernel read lists): the [batch] int32 tail starts it read,
  // where it read them.
  at::Tensor decode(const PagedKVCache::StepPages& pages, const Bases& bases, const at::Tensor& q,
                    int64_t layer, const std::vector<int64_t>& seqs, at::Tensor* scores,
                    at::Tensor* tails = nullptr);
  // Attention of the batch's new rows (after append_pages) over every stored token, or over
  // what each sequence retains under the policy; the attention recorded for a policy that
  // selects by it; then the policy's selections.
  at::Tensor attend(int64_t layer, const std::vector<int64_t>& seqs,
                    const std::vector<int64_t>& counts, const PagedKVCache::StepPages& pages,
                    const Bases& bases, const at::Tensor& q, const at::Tensor& k);
  // Positions sequence `seq` retains at `layer` with its new rows, per KV head
  // [kv_heads, held] (every one of its `length` tokens before any selection).
  at::Tensor retained(int64_t seq, int64_t layer, int64_t length) const;
  // A policy that needs window scores (SnapKV): those of over-budget `in`'s prefill, from the
  // block's queries qb [heads, n, d] and full-precision keys kb [kv_heads, n, d]; nothing for
  // the others (policies that select by attention: AttentionRecord::fill_batch).
  void fill_window_scores(RetentionInput& in, const at::Tensor& qb, const at::Tensor& kb);
  // Asks the policy for every input at once (one wait for the device) and has the inner cache
  // retain each choice; the records keep their chosen rows.
  void select(int64_t layer, const std::vector<int64_t>& seqs,
              const std::vector<RetentionInput*>& inputs);
  // The kept lists of a decode step of single tokens where the pools are, for the kernel
  // (undefined tensors when no sequence of the batch has selected at `layer`; then `attended`
  // is left alone, else set to the most tokens a sequence attends).
  struct StepLists {
    at::Tensor addresses, counts_tails;
  };
  StepLists step_lists(int64_t layer, const std::vector<int64_t>& seqs,
                       const PagedKVCache::StepPages& pages, int64_t& attended);
  // A decode step's evictions at `layer` on the kernel path where the policy drops one token
  // per head by its scores (RetentionPolicy::drops_lowest: the steady state of H2O, TOVA and
  // ScissorHands), as PagedKVCache does them, for latents of one KV head each (group 1).
  // steady_served: the over-budget sequences (indices into seqs) holding budget + 1 tokens
  // (`held`), `recent` + 1 of them in the tail, lists on the device and records covering the
  // rest, before the step's scores are recorded, grouped by list length and held count.
  // evict_steady: for one group (launch `group` of the layer), one kernel (kernels/steady_evict.h)
  // adds the step's scores (`logits`, as the decode kernel wrote them) to their records, drops each
  // head's lowest and writes the lists without it where the pools are; nothing is read back (the
  // inner cache's settle() does, once per step). Clears evict_after for them; the others select.
  SteadyGroups steady_served(int64_t layer, const std::vector<int64_t>& seqs,
                             const std::vector<RetentionInput>& inputs,
                             const std::vector<int64_t>& held, const std::vector<bool>& evict_after,
                             int64_t query_heads) const;
  void evict_steady(int64_t layer, const std::vector<int64_t>& seqs,
                    const std::vector<size_t>& served, size_t group,
                    const std::vector<int64_t>& old_lengths, const at::Tensor& logits,
                    const at::Tensor& tails, std::vector<bool>& evict_after);
  // The kernel's RoPE tables covering `tokens` positions, where the pools are: grown with
  // headroom (at least doubled), or to exactly `tokens` when `exact`.
  void cover(int64_t tokens, bool exact = false);
  // cos and sin [tokens, head_dim] of positions [0, tokens) as rope_cos_sin computes them,
  // where the pools are (a model constant, not KV memory); grown as cover() grows its tables.
  std::pair<at::Tensor, at::Tensor> rope_rows(int64_t tokens, bool exact = false);
  // Both exactly for `tokens` positions unless they cover them already (0: nothing).
  void reserve_rope(int64_t tokens);
  // The new rows' positions where the pools are: uploaded once per step (at its first layer,
  // from pinned memory, without waiting for the device), reused by its later layers.
  const at::Tensor& step_positions(const std::vector<int64_t>& positions);

  std::shared_ptr<const RetentionPolicy> policy_;  // null: every token stays
  double retention_s_ = 0;
  double waited_s_ = 0;  // the choices' read-backs (the inner cache counts its own)
  // Per (sequence, layer), for a policy that selects by attention: what it has seen (while
  // it may still select: a policy that evicts after the prefill drops it then).
  std::map<std::pair<int64_t, int64_t>, AttentionRecord> records_;
  SteadyBuffers steady_;  // evict_steady's rows, ring offsets and workspace
  int64_t group_;         // KV heads per latent
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
