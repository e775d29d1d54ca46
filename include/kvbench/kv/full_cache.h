// The KV cache behind every method: per sequence and layer, a key store and a value store made
// by the method's codec; attention through the chosen backend (`reference`: dequantize, then
// plain attention — the oracle; `cpu`: fused kernels reading the stored format); and the
// method's retention policy, asked after each append which tokens stay.
//   - A block of several tokens (the prefill) is attended over everything held plus the whole
//     block, as stored by the codec; then, if the policy evicts now, the layer shrinks to the
//     selection: stores that can drop tokens in place keep their codes (TokenStore::retain),
//     others (KIVI, GEAR) are rebuilt from the kept tokens' full-precision values, so their
//     groups and blocks form over kept tokens only. Only the prefill can be rebuilt.
//   - A single decode token is appended, the policy evicts (decode timing), and the token then
//     attends what stays.
//   - Window scores (SnapKV) are computed only when the prefill is over budget, from the
//     prefill's full-precision queries and keys.
// A policy that never finds the layer over budget leaves every step exactly as the full cache.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/attention/cpu_attention.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/kv/retention_policy.h"

namespace kvbench {

enum class AttentionBackend { kReference, kCpu };
// "reference" | "cpu"; throws Error otherwise.
AttentionBackend attention_backend_from_name(const std::string& name);

class CompressedKVCache : public KVCache {
 public:
  // `policy` null: every token kept (FullRetention). `rope_inv_freq`: the model's RoPE inverse
  // frequencies ([head_dim / 2] float64, rope_inverse_frequencies), needed only by policies
  // whose kept tokens take cache positions (RetentionPolicy::cache_positions()).
  CompressedKVCache(std::shared_ptr<const Codec> codec, AttentionBackend backend,
                    int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                    std::shared_ptr<const RetentionPolicy> policy = nullptr,
                    at::Tensor rope_inv_freq = at::Tensor());

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  std::vector<int64_t> kept_tokens(int64_t seq) const override;
  StorageBytes storage() const override;
  // The stores' buffers whole (spare rows included), with the shared bytes and Quest's pages.
  uint64_t allocated_bytes() const override;
  // The next sequences added get stores sized for their prompts and totals
  // (TokenStore::reserve), in order, so no store's buffers double up to there; under an
  // evicting policy sized for what each layer holds before its first eviction, and fitted at
  // each eviction to what can enter before the next (first_rows, room_after_eviction).
  // Replaces any unused reservation.
  void reserve(const std::vector<SequenceTokens>& seqs) override;
  StorageBytes nominal() const override;
  double retention_seconds() const override { return retention_s_; }
  // Every layer's positions (int64), H2O's scores (fp32) and ScissorHands' history (bool).
  uint64_t retention_bytes() const override;

  // Stores a block of `seq`'s tokens at `layer` as append_and_attend would, without computing
  // their attention: a long history for benchmarks that time the decode steps after it.
  // Only for caches that never evict (full retention, Quest); throws otherwise.
  //   k, v: [num_kv_heads, n, head_dim] fp32, RoPE applied
  void append_unattended(int64_t seq, int64_t layer, const at::Tensor& k, const at::Tensor& v);

  const Codec& codec() const { return *codec_; }
  // The dtype the model's keys and values stand for (model.dtype; fp32 by default): a prompt's
  // prefill attends them rounded to it, as the full cache of that dtype stores them, so a
  // codec that stores nothing lossy yet (KIVI within its window) equals the full cache.
  void set_computed_dtype(at::ScalarType dtype) { computed_dtype_ = dtype; }
  const RetentionPolicy& policy() const { return *policy_; }
  // Logical positions of the tokens a layer holds: [kv_heads, held] int64, sorted ascending
  // per head (the slots themselves are not in order once a policy has evicted).
  // Tracked only for policies that can evict (undefined for full retention).
  at::Tensor kept_positions(int64_t seq, int64_t layer) const;

 private:
  struct Layer {
    std::unique_ptr<TokenStore> keys, values;
    // [kv_heads, held] int64 position of the token in each slot; only when the policy can
    // evict. Slots are in position order until the first eviction moves rows.
    at::Tensor positions;
    at::Tensor scores;  // [kv_heads, held] fp32 accumulated attention (kScoresEveryStep)
    // [kv_heads, held, group, history] bool (kLowAttentionCounts): entry [h, j, g, p % history]
    // is whether query head h * group + g at position p gave the token in slot j less than
    // uniform attention, for the last `history` query positions p; false where the query did
    // not see the token. Moves with the slots like `scores`.
    at::Tensor low;
    std::unique_ptr<QuestPages> pages;  // kQueryPages, sparse layers only
  };
  struct Sequence {
    std::vector<Layer> layers;
    int64_t length = 0;
    int64_t prompt = 0;  // the tokens of its first block (RetentionInput::prompt)
    int64_t total = 0;   // the tokens reserve() announced (0: none)
  };
  Sequence& sequence(int64_t seq);
  const Sequence& sequence(int64_t seq) const;
  at::Tensor attend(const Layer& layer, const at::Tensor& q) const;
  // Quest's decode step: the top pages of each KV head as token runs, then exact attention over
  // them, read in place (the reference backend gathers them).
  TokenRuns quest_runs(const Layer& layer, const at::Tensor& q) const;
  at::Tensor attend_runs(const Layer& layer, const at::Tensor& q, const TokenRuns& runs) const;
  // [num_heads, w, n] softmax attention of the block's last w queries over its n tokens.
  at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, int64_t w) const;
  // Adds the attention probabilities the block's queries (positions start..) give every held
  // token, from the keys as stored, to layer.scores (kScoresEveryStep policies).
  void accumulate_scores(Layer& layer, const at::Tensor& q, int64_t start) const;
  // The block's newest query's attention over every held token, group-averaged:
  // [kv_heads, held] (kLastQueryScores policies).
  at::Tensor last_query_scores(const Layer& layer, const at::Tensor& q) const;
  // Records, for the block's last `history` queries (positions start..), which held tokens
  // each gave less than uniform attention, in layer.low (kLowAttentionCounts policies).
  void record_low_attention(Layer& layer, const at::Tensor& q, int64_t start) const;
  // The policy's low-attention counts per held slot, group-averaged: [kv_heads, held].
  at::Tensor low_attention_counts(const Layer& layer) const;
  // Asks the policy which tokens stay (it sees them in position order): kept slots
  // [kv_heads, n].
  at::Tensor select(const Layer& layer, RetentionInput in) const;
  // Shrinks the layer to the slots `kept` ([kv_heads, n]); its stores keep room for `more`
  // tokens beyond the kept ones (-1: as they are).
  void evict(Layer& layer, const at::Tensor& kept, const at::Tensor& k, const at::Tensor& v,
             bool prefill, int64_t more) const;
  // Asks the policy and evicts if the layer is over budget; the policy's inputs are computed
  // only then (or every step where the policy needs per-step state). Timed as retention.
  // `total`: the tokens the sequence was reserved for (0: unknown).
  void maybe_evict(Layer& layer, RetentionInput& in, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, int64_t total);
  // Rows layer `layer`'s stores take when a sequence reserved as `t` is added: the request
  // without eviction; under a retention policy what the layer holds before its first eviction
  // (the prompt when it is over the layer's budget, else up to the budget plus the decode
  // token that enters before the oldest leaves, or the whole request for a policy that then
  // never evicts). 0: nothing reserved.
  int64_t first_rows(int64_t layer, const SequenceTokens& t) const;
  // Tokens that can enter a layer's stores after an eviction of a block of `n` at `length`
  // tokens and before the next one. A policy evicting during decode: one after the prefill
  // (decode steps follow), the block's size after a later block (prefill chunks: the next
  // one), -1 after a decode step (keep the stores as they are: they already have the one
  // row, so the timed decode path never reallocates). One evicting after the prefill: the
  // rest of the reserved `total`, -1 when none was reserved.
  int64_t room_after_eviction(bool prefill, int64_t n, int64_t length, int64_t total) const;
  // Cache positions (cache_positions() policies): each held token's RoPE offset, its rank
  // among the held tokens minus its logical position, [kv_heads, held] int64.
  at::Tensor cache_offsets(const Layer& layer) const;
  // Attention of the block's queries when kept tokens take cache positions: every key is
  // attended as if re-rotated to its rank (scores depend only on relative rotation, so keys
  // whose offset equals the query's need nothing; the others see the query rotated by the
  // difference). `cpu`: the first run (StreamingLLM's sinks) through a rotated query in the
  // fused kernel; `reference`: every key rotated by its offset difference.
  at::Tensor attend_cache_positions(const Layer& layer, const at::Tensor& q) const;

  std::shared_ptr<const Codec> codec_;
  std::shared_ptr<const RetentionPolicy> policy_;
  bool evicts_;               // false for full retention: no positions tracked, no policy calls
  const QuestPolicy* quest_;  // the policy when it is Quest (reads pages, never evicts)
  AttentionBackend backend_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  at::Tensor rope_inv_freq_;  // [head_dim / 2] float64; only for cache_positions() policies
  at::ScalarType computed_dtype_ = at::kFloat;  // set_computed_dtype()
  double retention_s_ = 0;  // wall time spent on the policy's inputs, selection and eviction
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
  std::deque<SequenceTokens> reserved_;  // the next sequences to add (reserve())
};

// The uncompressed cache: identity storage in `dtype`, reference attention.
class FullKVCache final : public CompressedKVCache {
 public:
  FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype);
};

}  // namespace kvbench
