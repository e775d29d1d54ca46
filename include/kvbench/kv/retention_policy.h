// A retention policy: which tokens of one (sequence, layer) the cache keeps. The cache owns the
// storage (a codec's TokenStores) and asks the policy, after it appends a block of tokens,
// whether the layer is over budget and, if so, which held tokens stay. A policy states up front
// what it needs from the engine (positions only, or the attention of a window of prefill
// queries) so the cache computes nothing more, and when it evicts (once after the prefill, or
// whenever decode pushes the layer over budget). Selections are per KV head: under GQA one
// selection per KV head from scores averaged over its query group; every head keeps the same
// number of tokens, so stores stay rectangular (a layer's budget may differ from another's:
// PyramidKV). Kept keys keep their original positions (RoPE is already applied) and new tokens
// use the logical position (KVCache::length), unless the policy asks for cache positions
// (cache_positions(): StreamingLLM re-rotated).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

// What the cache must compute for the policy.
enum class RetentionNeeds {
  kPositions,        // logical positions of the held tokens only (StreamingLLM, full)
  kWindowScores,     // at the prefill: attention of its last `observation_window()` queries
  kScoresEveryStep,  // every step's attention probabilities, accumulated per token (H2O)
  kLastQueryScores,  // on evicting steps, the newest query's attention over the held tokens (TOVA)
  kQueryPages,       // per-page key bounds; each decode step reads the top pages only (Quest)
  kLowAttentionCounts  // per token: how many of the last `observation_window()` queries gave it
                       // less than uniform attention (ScissorHands)
};

// When the policy evicts.
enum class EvictionTiming {
  kAfterPrefill,  // once, when the sequence's first block (the prefill) has been attended
  kDecode,        // after every append that leaves the layer over budget
};

const char* eviction_timing_name(EvictionTiming timing);

// What a policy sees when it selects, for one (sequence, layer).
struct RetentionInput {
  int64_t layer = 0;
  int64_t num_layers = 1;  // the model's layer count (per-layer budgets, PyramidKV)
  int64_t length = 0;      // T: tokens that have entered the sequence, the new block included
  bool prefill = false;    // the block just appended is the sequence's first
  // The sequence's prompt: the tokens of its first block (its prefill; a request recomputed
  // after preemption: its prompt and what it had generated). 0: not known, which only a
  // policy whose budget does not depend on it (budget_needs_prompt) accepts.
  int64_t prompt = 0;
  // [kv_heads, held] int64: logical position of every held token, ascending per head.
  at::Tensor positions;
  // Optional, on the host: the same positions, given by a cache whose `positions` (moved next
  // to the scores) live on a GPU, so that a policy can size its results without waiting for
  // the device (newest_indices).
  at::Tensor host_positions;
  // kWindowScores only: [num_heads, w, held] fp32 softmax attention probabilities of the
  // block's last w queries over the held tokens (causal: query i sees held positions up to
  // its own), scaled by 1/sqrt(head_dim). Undefined otherwise.
  at::Tensor window_attention;
  // kScoresEveryStep only: [kv_heads, held] fp32 attention probability each held token has
  // received from every query so far (averaged over each KV head's query group).
  at::Tensor accumulated;
  // kLastQueryScores only: [kv_heads, held] fp32 attention of the block's newest query
  // (averaged over each KV head's query group).
  at::Tensor current;
  // kLowAttentionCounts only: [kv_heads, held] fp32: for each held token, the number of the
  // last observation_window() queries that saw it and gave it attention below 1/t (t: the
  // tokens that query attended), averaged over each KV head's query group.
  at::Tensor low_counts;

  int64_t held() const { return positions.size(1); }
};

// A choice that is a span of positions: of the held tokens, those at positions [0, prefix) and
// [newest, length) stay (RetentionPolicy::span).
struct RetentionSpan {
  int64_t prefix = 0, newest = 0;
};

// A policy that keeps, after every append, the first `sinks` positions and the newest `window`
// (RetentionPolicy::sinks_and_window).
struct SinksAndWindow {
  int64_t sinks = 0, window = 1;
};

class RetentionPolicy {
 public:
  virtual ~RetentionPolicy() = default;
  virtual std::string name() const = 0;
  // Resolved parameters, for reports.
  virtual nlohmann::json params() const = 0;
  virtual RetentionNeeds needs() const = 0;
  virtual EvictionTiming timing() const = 0;
  // Whether kept tokens take cache positions (their rank among the kept tokens) as their RoPE
  // positions instead of their logical ones (StreamingLLM's re-rotation); the cache then needs
  // the model's RoPE frequencies.
  virtual bool cache_positions() const { return false; }
  // Whether every KV head of a layer always keeps the same tokens (StreamingLLM's positions,
  // TOVA's head-averaged scores): what codecs sharing one latent between heads need (Palu's
  // G-LRD groups).
  virtual bool same_tokens_every_head() const { return false; }
  // kWindowScores: queries at the end of the prefill whose attention the policy needs;
  // kLowAttentionCounts: the history window of queries whose low-attention counts it needs.
  // 0 otherwise.
  virtual int64_t observation_window() const { return 0; }
  // Tokens per KV head that layer `in.layer` (of `in.num_layers`) holds after a selection
  // when `in.length` tokens have entered; reads only layer, num_layers, length and prompt.
  // Layers may differ (PyramidKV); INT64_MAX for a policy that never evicts.
  virtual int64_t budget(const RetentionInput& in) const = 0;
  // Whether budget() and select() read in.prompt (H2O's budgets as fractions of the prompt):
  // the caches then need the whole prompt as the sequence's first block, so chunked prefills
  // are refused.
  virtual bool budget_needs_prompt() const { return false; }
  // Whether the layer must shrink now (in.positions set): it holds more than its budget.
  // Never true when the budget covers every token, which is what makes budget >= length
  // identical to full.
  bool over_budget(const RetentionInput& in) const { return in.held() > budget(in); }
  // Which held tokens stay: [kv_heads, kept] int64 indices into the held tokens, ascending per
  // head, the same count for every head. Called only when over_budget(in).
  virtual at::Tensor select(const RetentionInput& in) const = 0;
  // A positions-only policy whose choice is a span (StreamingLLM: its sinks and window) says
  // so here, reading what budget() reads; select() must return the held tokens the span
  // covers. A cache that keeps its retained positions as a list and a tail applies it
  // without a positions tensor. nullopt (the default): ask select().
  virtual std::optional<RetentionSpan> span(const RetentionInput&) const { return std::nullopt; }
  // A decode-timing, positions-only policy whose kept tokens are always its first `sinks`
  // positions and its newest `window` (StreamingLLM with original positions) says so here: a
  // cache may then keep them in a fixed ring of sinks + window slots, the token entering at
  // position L taking the slot of the one leaving (L - window), and read every slot densely
  // (PagedKVCache). Its span() and select() must agree. nullopt (the default): it does not.
  virtual std::optional<SinksAndWindow> sinks_and_window() const { return std::nullopt; }
  // select() for several over-budget inputs (a decode step's sequences at one layer), each
  // result what select() returns for its input. The default asks select() per input, its
  // positions moved where its scores are; a policy that can select a rectangular batch with
  // one set of tensor operators overrides it (a GPU step then issues them once, not per
  // sequence). Inputs carry host_positions.
  virtual std::vector<at::Tensor> select_batch(
      const std::vector<const RetentionInput*>& inputs) const;
  // A decode-timing policy's steady state, which a cache may apply where the scores are,
  // without select(): a layer holding budget + 1 tokens whose newest `recent` are the last
  // `recent` it holds drops exactly one token per KV head, the one with the lowest
  // steady_scores() among the others, ties to the later one (what select() keeps there). Such
  // a policy returns its `recent` (H2O without normalization and ScissorHands: their window;
  // TOVA: 0); nullopt (the default): ask select(). `prompt`: the sequence's
  // (RetentionInput::prompt), for a window sized from it (H2O's recent_ratio; nullopt when 0).
  virtual std::optional<int64_t> drops_lowest(int64_t prompt) const {
    (void)prompt;
    return std::nullopt;
  }
  // drops_lowest()'s scores for several inputs at once, from what select() reads (H2O's
  // accumulated, TOVA's current, ScissorHands' low_counts) stacked: [inputs, kv_heads, held]
  // fp32 in, a tensor of that shape out, the lowest dropped. The default: the input itself.
  virtual at::Tensor steady_scores(const at::Tensor& input) const { return input; }
};

// Keeps every token: the behaviour of a cache without eviction.
class FullRetention final : public RetentionPolicy {
 public:
  std::string name() const override { return "full"; }
  nlohmann::json params() const override { return nlohmann::json::object(); }
  RetentionNeeds needs() const override { return RetentionNeeds::kPositions; }
  EvictionTiming timing() const override { return EvictionTiming::kAfterPrefill; }
  bool same_tokens_every_head() const override { return true; }
  int64_t budget(const RetentionInput&) const override { return INT64_MAX; }
  at::Tensor select(const RetentionInput& in) const override;
};

// [kv_heads, r] indices of the held tokens at positions >= first: the newest r, as positions
// ascend (every head must hold the same number). Counted on the host copy of the positions
// when the input has one (no wait for the device, as at::nonzero on a GPU has to).
at::Tensor newest_indices(const RetentionInput& in, int64_t first);
// Two or more inputs of one shape, for a select_batch that keeps a recent window whole: the
// same held count and the same number `newest` of held tokens at positions >= length - recent
// in every head of every input (the steady state of decode-time eviction). `scores`: each
// input's `scores` member stacked, [inputs, kv_heads, held]; positions (from the inputs' host
// positions, uploaded once) and lengths [inputs, 1, 1], int64, where the scores are. nullopt
// when the inputs differ or lack those scores: select them one by one (select() says what is
// wrong with an input).
struct NewestBatch {
  at::Tensor positions, lengths, scores;
  int64_t newest = 0;
};
std::optional<NewestBatch> newest_batch(const std::vector<const RetentionInput*>& inputs,
                                        int64_t recent, at::Tensor RetentionInput::*scores);
// Per input: the `top` entries of `masked` ([inputs, kv_heads, held], the recent window
// masked to -inf) and the batch's newest held tokens, ascending (H2O's and ScissorHands'
// choice).
std::vector<at::Tensor> top_and_newest(const NewestBatch& batch, const at::Tensor& masked,
                                       int64_t top);

// The top-`n` entries of each row of `scores` ([kv_heads, tokens], or [batch, kv_heads,
// tokens]) as ascending indices ([kv_heads, n] int64; [batch, kv_heads, n]). Ties go to the earlier
// token (a stable sort), so selections are deterministic. The shared tail of every score-based
// policy (kvpress's ScorerPress).
at::Tensor top_tokens(const at::Tensor& scores, int64_t n);

// The window scores of RetentionNeeds::kWindowScores: [num_heads, w, n] softmax attention of a
// block's last w queries over its n keys (causal), scaled by 1/sqrt(head_dim), in fp32.
//   q: [num_heads, n, head_dim], k: [num_kv_heads, n, head_dim]
at::Tensor prefill_window_attention(const at::Tensor& q, const at::Tensor& k, int64_t w);

// The per-step attention state of the score-based policies, computed the same way by every
// cache. A block of queries q [num_heads, n, head_dim] at positions start .. start + n - 1
// attends held keys [kv_heads, held, head_dim] at positions key_pos [kv_heads, held] (a query
// sees the keys at or before it), scores scaled by 1/sqrt(head_dim), fp32, on keys' device.
// The block's own keys are the last n held, in position order (every cache appends a block
// after what it held); the keys before them may be in any order.
//   summed_attention: per held token, its probabilities summed over the block's queries and
//     averaged over each KV head's query group, [kv_heads, held] (H2O's accumulated scores).
//   newest_query_attention: the newest query's probabilities (it sees every held token),
//     averaged over each group, [kv_heads, held] (TOVA).
//   low_attention: for the block's last m = min(n, history) queries, whether each gave a held
//     token it sees less than uniform attention (1/t, t the tokens it sees): [kv_heads, held,
//     group, m] bool, query i at position start + n - m + i (ScissorHands' history).
at::Tensor summed_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                            int64_t start);
at::Tensor newest_query_attention(const at::Tensor& q, const at::Tensor& keys);
at::Tensor low_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                         int64_t start, int64_t history);

}  // namespace kvbench
