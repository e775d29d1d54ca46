// GEAR on the GPU path ("attention": "paged"): the CPU codec's blocks (gear_codec.h), made
// with ATen ops where the cache lives (gear_blocks.h) and attended in place.
//   append   new tokens go to the exact buffer, a pool per layer of [slots, buffer, kv_heads,
//            head_dim] rows in the model dtype (one slot per sequence; a batch's rows are
//            written by one index_copy per side). When a sequence's buffer holds `buffer`
//            tokens or more, the largest multiple of `buffer` is compressed as one block
//            (rank_prefill for an append of several tokens, rank_decode for one), exactly the
//            CPU store's rule, so blocks form where the CPU cache's do, with its bytes (and on
//            the CPU its codes and factors to the bit; gear_blocks.h says what a GPU may move).
//   decode   one launch for the batch (kernels/gear_decode.h): each token's key and value
//            rebuilt from codes, scales, factors and outliers in shared memory and attended;
//            nothing reconstructed is written to global memory. On the CPU with the emulated
//            kernel path (tests), the kernel's host reference over the same tables.
//   prefill  per sequence, every held token reconstructed with ATen ops and the block attended
//            over them (paged_block_attention: SDPA on a GPU); also the CPU's decode steps.
// Not pages: a block's tensors come from the device's caching allocator when it forms (its size
// depends on its token count and outliers). Codes span tokens, so no token can be dropped from
// a block: retention policies run only if they select once after the prefill (SnapKV and
// PyramidKV from window scores of the full-precision keys; StreamingLLM with "evict":
// "after_prefill" from positions; H2O, TOVA and ScissorHands with "evict": "after_prefill"
// from the prefill's attention over the reconstructed keys, which is what the CPU cache
// records); the layer is then stored afresh from the kept tokens'
// full-precision values, as the CPU cache does (others run with attention cpu or reference).
// The model must be fp16 or bf16 (the kernel's 16-bit metadata); the kernel takes
// head_dim <= 128 and <= 8 query heads per KV head.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "kvbench/kv/gear_blocks.h"
#include "kvbench/kv/gear_codec.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/retention_policy.h"

namespace kvbench {

class GearBlockCache final : public KVCache {
 public:
  GearBlockCache(std::shared_ptr<const GearCodec> codec, int64_t num_layers, int64_t num_kv_heads,
                 int64_t head_dim, at::Device device = at::kCPU,
                 std::shared_ptr<const RetentionPolicy> policy = nullptr,
                 bool kernel_path_on_cpu = false);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                     const std::vector<int64_t>& counts, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v) override;
  std::vector<int64_t> kept_tokens(int64_t seq) const override;
  // The blocks and each live sequence's whole exact buffers, the rows not in use as padding
  // (what a CPU store keeps is storage() less that padding).
  StorageBytes storage() const override;
  // The blocks by their formula and the exact rows in use.
  StorageBytes nominal() const override;
  // The blocks, and the exact buffers' pools whole (every slot, `buffer` rows each).
  uint64_t allocated_bytes() const override;
  // Exact-buffer slots for the coming sequences: the pools take exactly what the live and the
  // coming sequences need (an idle cache's are made again at that size), so no add_sequence
  // grows them. Blocks are allocated as they form. After reserve_pool: nothing (the slots are
  // the engine's budget).
  void reserve(const std::vector<SequenceTokens>& seqs) override;
  void reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) override;
  // A slot's exact buffers: `buffer` rows of keys and of values in the model dtype, every layer.
  uint64_t slot_bytes(int64_t block) const override;
  at::Device device() const override { return device_; }
  double retention_seconds() const override { return retention_s_; }

  // Blocks sequence `seq` holds at `layer` (tests).
  int64_t blocks(int64_t seq, int64_t layer) const;

 private:
  struct Block {
    int64_t start = 0, n = 0, rank = 0;
    GearSideTensors key, value;
  };
  struct Layer {
    std::vector<Block> blocks;
    int64_t compressed = 0;  // tokens held in blocks
    int64_t held = 0;        // tokens held: the blocks', then the exact buffer's
    int64_t length = 0;      // tokens that entered (advances at each layer's append)
  };
  struct Sequence {
    int64_t slot = 0;
    std::vector<Layer> layers;
  };
  // A layer's decode tables for a batch: GearSequence rows then GearBlock rows, where the
  // pools are; rebuilt when the batch or a block list changes.
  struct Tables {
    std::vector<int64_t> key;
    at::Tensor bytes;
  };

  Sequence& sequence(int64_t seq);
  const Sequence& sequence(int64_t seq) const;
  // The exact pools with room for `slots` slots in all: at least doubled when they grow, or
  // exactly `slots` when `exact`.
  void reserve_slots(int64_t slots, bool exact = false);
  // reserve()'s sizing: room for `sequences` more sequences than are live.
  void reserve_sequences(int64_t sequences);
  // A sequence whose buffer fills at this step, with its new rows ([n, kv_heads, head_dim],
  // model dtype).
  struct Pending {
    Sequence* seq;
    at::Tensor k, v;
  };
  // Appends those sequences' rows at `layer`, each compressing the largest multiple of `buffer`
  // of its buffered and new rows as one block (sequences forming alike blocks together).
  void append_with_blocks(int64_t layer, const std::vector<Pending>& pending);
  // Keys and values [kv_heads, tokens, head_dim] fp32 of every token `s` holds at `layer`.
  std::pair<at::Tensor, at::Tensor> reconstruct(const Sequence& s, int64_t layer) const;
  // After a step's attention: each sequence whose first block this was and whose layer is over
  // the policy's budget keeps the policy's selection, stored afresh (blocks over the kept
  // tokens only). q, k, v: the step's rows as appended.
  void evict_after_prefill(int64_t layer, const std::vector<int64_t>& seqs,
                           const std::vector<int64_t>& counts, const std::vector<bool>& first,
                           const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);
  // Fills what the policy needs to select from `s`'s prefill at `layer` (in.positions set):
  // q [num_heads, n, head_dim] and k [kv_heads, n, head_dim] fp32, the prefill's rows.
  void select_inputs(RetentionInput& in, const Sequence& s, int64_t layer, const at::Tensor& q,
                     const at::Tensor& k) const;
  // The decode kernel (or its host reference) for a batch of single tokens.
  at::Tensor decode(int64_t layer, const std::vector<int64_t>& seqs, const at::Tensor& q);
  const at::Tensor& tables(int64_t layer, const std::vector<int64_t>& seqs);
  // Bytes of every layer of every sequence: `block` of each block, plus the exact rows in use;
  // `whole_buffers`: plus the rest of each sequence's exact buffers, as padding.
  StorageBytes total(const std::function<StorageBytes(const Block&)>& block,
                     bool whole_buffers) const;
  // Values the host computes once per step and every layer uses (the batch's lengths, the
  // exact-buffer rows its tokens go to), where the pools are: uploaded from pinned memory
  // without waiting for the device when they differ from the last upload.
  template <class T>
  struct Uploaded {
    std::vector<T> host;
    at::Tensor device;
  };
  template <class T>
  const at::Tensor& upload(Uploaded<T>& cached, const std::vector<T>& values);
  // The power iteration's random start of block number `block_index` at rank `rank`: the same
  // for every layer and sequence (the CPU store's seed), drawn on the CPU once and kept where
  // the pools are.
  const at::Tensor& random_start(uint64_t block_index, int64_t rank);

  std::shared_ptr<const GearCodec> codec_;
  GearParams params_;
  at::ScalarType dtype_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  at::Device device_;
  bool kernel_path_;
  int64_t value_k_;
  std::shared_ptr<const RetentionPolicy> policy_;  // null: every token kept
  double retention_s_ = 0;
  std::map<int64_t, Sequence> seqs_;
  int64_t next_id_ = 0;
  std::vector<int64_t> free_slots_;
  int64_t slots_ = 0;
  bool pooled_ = false;                        // reserve_pool sized the slots
  std::vector<at::Tensor> exact_k_, exact_v_;  // per layer [slots, buffer, kv_heads, head_dim]
  std::vector<Tables> tables_;                 // per layer
  Uploaded<int> lengths_;
  Uploaded<int64_t> dest_, source_;
  std::map<std::pair<uint64_t, int64_t>, at::Tensor> starts_;
};

}  // namespace kvbench
