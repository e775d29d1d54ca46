// What the retention policies that select by attention (H2O, TOVA, ScissorHands) need a cache
// to remember of one (sequence, layer), and how a cache asks them for a batch of selections.
// The paged caches (PagedKVCache, PaluPagedCache) attend through kernels that hand back each
// decode query's scores, or through blocks of reconstructed keys at the prefill; both feed
// the same record, with the reference cache's formulas (retention_policy.h), so a policy sees
// what it would see in the reference cache. The record's rows follow the held tokens: a step
// appends zero rows for its new tokens, a selection keeps the chosen rows.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

// Whether `policy` selects by attention (its cache records every step's attention, and every
// new token attends everything held before the layer shrinks: H2O's order). False for null.
bool selects_by_attention(const RetentionPolicy* policy);

// Bytes per held token and KV head of the record a cache keeps for `policy` while it records
// (AttentionRecord, and the CPU cache's own tensors of the same shapes): H2O's fp32 sum (4),
// ScissorHands' `group` x observation_window() bools; 0 for a policy recording nothing that
// lasts (TOVA's newest scores live for one step).
uint64_t record_bytes_per_token(const RetentionPolicy& policy, int64_t group);

class AttentionRecord {
 public:
  // A block of queries qb [heads, n, d] at positions start .. start + n - 1 over the held keys
  // [kv_heads, held, d] at `positions` [kv_heads, held] (a query sees the keys at or before
  // it). `newest` becomes TOVA's newest-query attention (other policies: left alone).
  // `summed`: what computes H2O's sums (summed_attention's arguments and result; null: that
  // function), so a paged cache on its kernel path hands in its kernels'.
  using SummedFn = at::Tensor (*)(const at::Tensor& q, const at::Tensor& keys,
                                  const at::Tensor& key_pos, int64_t start);
  void add_block(const RetentionPolicy& policy, const at::Tensor& qb, const at::Tensor& keys,
                 const at::Tensor& positions, int64_t start, at::Tensor& newest,
                 SummedFn summed = nullptr);
  // One decode query at position `start`, which sees every held token: its scaled scores
  // q . k / sqrt(d) over them, [heads, held] fp32 (the decode kernel's, or computed).
  void add_scores(const RetentionPolicy& policy, const at::Tensor& scores, int64_t kv_heads,
                  int64_t start, at::Tensor& newest);
  // The policy's input from the record (`newest`: the step's, for TOVA) into `in`.
  void fill(const RetentionPolicy& policy, const at::Tensor& newest, RetentionInput& in) const;
  // After a selection: keeps the rows at `where` ([kv_heads, kept] indices into the held
  // tokens, on any device).
  void keep(const at::Tensor& where);
  // The recorded states (undefined until recorded): H2O's summed probabilities, ScissorHands'
  // low-attention ring.
  const at::Tensor& summed() const { return summed_; }
  const at::Tensor& low_history() const { return low_; }
  // Bytes of the state it keeps (H2O's sums, ScissorHands' ring).
  uint64_t bytes() const {
    return (summed_.defined() ? uint64_t(summed_.nbytes()) : 0) +
           (low_.defined() ? uint64_t(low_.nbytes()) : 0);
  }

  // The three calls above for a decode step's sequences at one layer (record i is sequence
  // i's; null: not recorded). Records that hold as many tokens, in states of one shape (the
  // steady state of decode-time eviction), are served by one set of operators over their
  // stacked states, so a GPU step issues them once per layer, not once per sequence; each
  // record's result is what the single call gives (the same operators, row by row). The
  // others go one by one.
  //   add_scores_batch: record i's query at position starts[i] scored its held[i] tokens
  //     in logits[i] ([records, heads, >= held[i]] fp32; columns past held[i] ignored).
  //   fill_batch: inputs[i] from records[i] (newest[i]: TOVA's); only ScissorHands' counts
  //     are computed, the other states are handed over as they are.
  //   keep_batch: records[i] keeps its rows at wheres[i] ([kv_heads, kept] indices).
  static void add_scores_batch(const RetentionPolicy& policy,
                               const std::vector<AttentionRecord*>& records,
                               const at::Tensor& logits, const std::vector<int64_t>& held,
                               int64_t kv_heads, const std::vector<int64_t>& starts,
                               std::vector<at::Tensor>& newest);
  static void fill_batch(const RetentionPolicy& policy,
                         const std::vector<const AttentionRecord*>& records,
                         const std::vector<at::Tensor>& newest,
                         const std::vector<RetentionInput*>& inputs);
  static void keep_batch(const std::vector<AttentionRecord*>& records,
                         const std::vector<at::Tensor>& wheres);
  // RetentionPolicy::drops_lowest's choice for records whose states cover the same number of
  // held tokens (covers()): per record and KV head, the index among the first `candidates`
  // with the lowest steady score (the policy's steady_scores of its input as fill() makes it;
  // the last of equal ones), as [records, kv_heads] int64 where the states are; each record
  // drops that token's row. `newest`: record i's newest-query attention (TOVA's; ignored by the
  // other policies). One set of operators for all of them: the torch formulation of what
  // kernels/steady_evict.h does in one launch on the paged cache's kernel path, and the oracle
  // its host reference is tested against (tests/unit/steady_evict_test.cpp).
  static at::Tensor drop_lowest_batch(const RetentionPolicy& policy,
                                      const std::vector<AttentionRecord*>& records,
                                      const std::vector<at::Tensor>& newest, int64_t candidates);
  // Whether what `policy` selects from (this record's state; TOVA: `newest`) covers `held`
  // tokens: drop_lowest_batch can serve it.
  bool covers(const RetentionPolicy& policy, const at::Tensor& newest, int64_t held) const;

  // For a step that updates and drops in one (kernels/steady_evict.h, on the paged cache's
  // kernel path), before the step's scores are added:
  //   steady_ready: the record's state (H2O's sums, ScissorHands' ring; TOVA keeps none)
  //     covers held - 1 tokens, the step's new one not yet among them;
  //   steady_states: the records' states stacked, [records, kv_heads, held - 1, ...]
  //     contiguous (a view when they lie so in one buffer, as set_steady_states leaves them);
  //     undefined for TOVA;
  //   set_steady_states: record i's state becomes states[i] (a view; the caller's new buffer).
  bool steady_ready(const RetentionPolicy& policy, int64_t held) const;
  static at::Tensor steady_states(const RetentionPolicy& policy,
                                  const std::vector<AttentionRecord*>& records);
  static void set_steady_states(const RetentionPolicy& policy,
                                const std::vector<AttentionRecord*>& records,
                                const at::Tensor& states);

 private:
  // H2O's sums grown to the held tokens `summed` [kv_heads, held] covers, plus it.
  void add_summed(const at::Tensor& summed);
  // add_scores_batch for records of one held count and state shape (group: their indices).
  static void add_group_scores(const RetentionPolicy& policy,
                               const std::vector<AttentionRecord*>& records,
                               const std::vector<size_t>& group, const at::Tensor& logits,
                               int64_t held, int64_t kv_heads, const std::vector<int64_t>& starts,
                               std::vector<at::Tensor>& newest);
  // `state` with zero rows for the held tokens it does not cover yet: `shape` is the whole
  // state's ([kv_heads, held, ...]).
  static at::Tensor grown(const at::Tensor& state, std::vector<int64_t> shape,
                          const at::TensorOptions& options);

  at::Tensor summed_;  // H2O: [kv_heads, held] fp32, probabilities summed over every query
  at::Tensor low_;     // ScissorHands: [kv_heads, held, group, window] bool, a ring of queries
};

// A policy's choice for one input: where it was computed (beside the scores) and its host copy.
struct RetentionChoice {
  at::Tensor where, host;
};

// The policy's choices for several over-budget inputs, each run where its scores are (its
// positions moved there from pinned memory; host_positions set so the policy can count on the
// host), brought to the host together: one wait for the device per call, not one per sequence.
// `waited_s`, when given, gains the seconds spent waiting for the work queued before the
// read-back (the layer's, and the choice's own small kernels): what a retention timer takes
// out, so that it does not count the layer's attention as the policy's. With `read_back`
// false nothing is brought back (`host` is left undefined for a choice made on a device): the
// caller uses the choices where they are and waits for nothing.
std::vector<RetentionChoice> choose_retained(const RetentionPolicy& policy,
                                             const std::vector<RetentionInput*>& inputs,
                                             double* waited_s = nullptr, bool read_back = true);

}  // namespace kvbench
