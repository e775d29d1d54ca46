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

#include <map>
#include <memory>
#include <string>
#include <vector>

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
  // `policy` null: every token kept (FullRetention).
  CompressedKVCache(std::shared_ptr<const Codec> codec, AttentionBackend backend,
                    int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                    std::shared_ptr<const RetentionPolicy> policy = nullptr);

  int64_t add_sequence() override;
  void remove_sequence(int64_t seq) override;
  int64_t length(int64_t seq) const override;
  at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) override;
  std::vector<int64_t> kept_tokens(int64_t seq) const override;
  StorageBytes storage() const override;
  StorageBytes nominal() const override;

  // Stores a block of `seq`'s tokens at `layer` as append_and_attend would, without computing
  // their attention: a long history for benchmarks that time the decode steps after it.
  // Only for caches that never evict (full retention, Quest); throws otherwise.
  //   k, v: [num_kv_heads, n, head_dim] fp32, RoPE applied
  void append_unattended(int64_t seq, int64_t layer, const at::Tensor& k, const at::Tensor& v);

  const Codec& codec() const { return *codec_; }
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
    std::unique_ptr<QuestPages> pages;  // kQueryPages, sparse layers only
  };
  struct Sequence {
    std::vector<Layer> layers;
    int64_t length = 0;
  };
  Sequence& sequence(int64_t seq);
  const Sequence& sequence(int64_t seq) const;
  at::Tensor attend(const Layer& layer, const at::Tensor& q) const;
  // Quest's decode step: exact attention over the top pages of each KV head, read in place.
  at::Tensor attend_pages(const Layer& layer, const at::Tensor& q) const;
  // [num_heads, w, n] softmax attention of the block's last w queries over its n tokens.
  at::Tensor window_attention(const at::Tensor& q, const at::Tensor& k, int64_t w) const;
  // Adds the attention probabilities the block's queries (positions start..) give every held
  // token, from the keys as stored, to layer.scores (kScoresEveryStep policies).
  void accumulate_scores(Layer& layer, const at::Tensor& q, int64_t start) const;
  // The block's newest query's attention over every held token, group-averaged:
  // [kv_heads, held] (kLastQueryScores policies).
  at::Tensor last_query_scores(const Layer& layer, const at::Tensor& q) const;
  // Asks the policy which tokens stay (it sees them in position order): kept slots
  // [kv_heads, n].
  at::Tensor select(const Layer& layer, RetentionInput in) const;
  // Shrinks the layer to the slots `kept` ([kv_heads, n]).
  void evict(Layer& layer, const at::Tensor& kept, const at::Tensor& k, const at::Tensor& v,
             bool prefill) const;

  std::shared_ptr<const Codec> codec_;
  std::shared_ptr<const RetentionPolicy> policy_;
  bool evicts_;               // false for full retention: no positions tracked, no policy calls
  const QuestPolicy* quest_;  // the policy when it is Quest (reads pages, never evicts)
  AttentionBackend backend_;
  int64_t num_layers_, num_kv_heads_, head_dim_;
  int64_t next_id_ = 0;
  std::map<int64_t, Sequence> sequences_;
};

// The uncompressed cache: identity storage in `dtype`, reference attention.
class FullKVCache final : public CompressedKVCache {
 public:
  FullKVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype);
};

}  // namespace kvbench
