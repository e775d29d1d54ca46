// The KV cache seen by the transformer: one object holds every layer of every sequence in a
// batch. The transformer hands it each layer's new keys/values together with the queries, and
// gets the attention output back, so the cache (through its codec, retention policy and
// attention backend) decides how tokens are stored, which are kept, and how attention reads
// them. That is the seam compression methods plug into.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kvbench/kv/token_store.h"

namespace kvbench {

// A sequence about to be added, for KVCache::reserve: the tokens its first step enters at once
// (the prompt) and the most it will have entered.
struct SequenceTokens {
  int64_t prompt = 0;
  int64_t total = 0;
};

class KVCache {
 public:
  virtual ~KVCache() = default;

  // Starts a new, empty sequence and returns its id.
  virtual int64_t add_sequence() = 0;
  // Frees a sequence's storage; its id is not reused.
  virtual void remove_sequence(int64_t seq) = 0;
  // Tokens that have entered `seq` (the position of its next token). Retention may keep fewer.
  virtual int64_t length(int64_t seq) const = 0;

  // Stores `seq`'s new tokens at `layer` and returns the attention of its new queries over
  // every kept token, causal within the new block (new token i sees positions < length + i + 1).
  // Layers are called in order 0..L-1 per step; length() advances after the last layer.
  //   q: [num_heads, n, head_dim] fp32, RoPE applied
  //   k: [num_kv_heads, n, head_dim] fp32, RoPE applied;  v: [num_kv_heads, n, head_dim] fp32
  //   returns [num_heads, n, head_dim] fp32
  virtual at::Tensor append_and_attend(int64_t seq, int64_t layer, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v) = 0;

  // The same for a packed batch at one layer: sequence seqs[i] brings counts[i] new tokens,
  // rows in sequence order (the transformer's layout), so a cache can serve the whole batch
  // in one call (one kernel launch per step on a GPU). Default: append_and_attend per
  // sequence.
  //   q: [n, num_heads, head_dim]   k, v: [n, num_kv_heads, head_dim]   (n = sum of counts)
  //   in fp32, or in attend_dtype() where a cache takes that
  //   returns [n, num_heads, head_dim] fp32, or in q's dtype when q came in attend_dtype()
  virtual at::Tensor append_and_attend_batch(int64_t layer, const std::vector<int64_t>& seqs,
                                             const std::vector<int64_t>& counts,
                                             const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v);

  // Tokens `seq` holds now at each layer, per KV head ([num_layers]): length() without
  // eviction, fewer once a retention policy has evicted. Every KV head of a layer holds the
  // same number of tokens (which tokens may differ per head).
  virtual std::vector<int64_t> kept_tokens(int64_t seq) const = 0;

  // K/V state held now for all sequences, measured from the stored tensors.
  virtual StorageBytes storage() const = 0;
  // The same state by the method's formula; storage() and nominal() disagreeing beyond
  // rounding means compression did not happen as claimed.
  virtual StorageBytes nominal() const = 0;
  uint64_t bytes() const { return storage().total(); }
  // Bytes the cache's storage occupies where it lives, in use or not: a pool's free pages, a
  // buffer's rows kept for tokens to come. What the cache costs its device; storage() is the
  // state it holds in them. Default: storage().total().
  virtual uint64_t allocated_bytes() const { return storage().total(); }
  // Bytes of the retention policy's bookkeeping beside the K/V state, measured from what the
  // cache holds for it now: kept positions or lists, H2O's summed scores, ScissorHands'
  // low-attention history (not in storage(), which is the method's K/V state). Default: none.
  virtual uint64_t retention_bytes() const { return 0; }
  // Sizes the storage for the sequences about to be added, one entry each. A pooled cache
  // (PagedKVCache) then holds the pages those and the live sequences can need, grown or (with
  // no sequence live) shrunk to that in one allocation, so that no later step grows it (a
  // growth copies every pool inside a timed step and leaves part of the pool free). A cache
  // whose policy evicts reserves at most the prompts: what it holds afterwards is its policy's
  // (the CPU cache fits its stores to that at each eviction).
  // A hint: without it caches grow as tokens come. Default: nothing.
  virtual void reserve(const std::vector<SequenceTokens>& seqs) { (void)seqs; }
  // The same for a pool shared by whatever runs: up to `sequences` sequences at once holding
  // `tokens` tokens in all, each sequence's in whole blocks of `block` tokens, none past
  // `longest` tokens (a serving engine's budget). The pool is then that budget: a later
  // reserve() (a request admitted) sizes what the cache keeps per sequence and leaves the
  // pool as it is. Caches that keep storage per sequence only ignore it. Default: nothing.
  virtual void reserve_pool(int64_t sequences, int64_t tokens, int64_t block, int64_t longest) {
    (void)sequences, (void)tokens, (void)block, (void)longest;
  }
  // Bytes reserve_pool allocates for each of its `sequences` beside the whole pages of the
  // blocks' tokens, with blocks of `block` tokens, over all layers: what one more sequence that
  // can run at once costs a pool of the same tokens (KIVI's rings, fp8's scales, a last page
  // reaching past a sequence's blocks where pages do not tile them, GEAR's exact buffers). A
  // serving budget holds it once per slot. Default: nothing.
  virtual uint64_t slot_bytes(int64_t block) const {
    (void)block;
    return 0;
  }

  // Wall seconds spent, since construction, on retention work: computing what the retention
  // policy needs (window scores, accumulated or last-query scores, low-attention counts, the
  // rotated query of re-rotated positions), selecting and evicting. Part of the step times;
  // 0 without a policy.
  virtual double retention_seconds() const { return 0; }
  // Of the host's time in this cache's calls, in all, the seconds it waited for the device (a
  // read-back of a policy's choice, or of lists changed where the pools are): on a GPU the
  // device's time, not the host's; 0 on the CPU and for caches that never wait.
  virtual double device_wait_seconds() const { return 0; }
  // Where the cache wants its inputs: the model hands q/k/v over on this device (a model on a
  // GPU can still fill a CPU cache, e.g. to fit a codec's bases), and takes the output back.
  virtual at::Device device() const { return at::kCPU; }
  // The dtype append_and_attend_batch takes q/k/v (and gives its output) in without a
  // conversion: a GPU cache whose kernels read fp16 saves a model computing in fp16 two casts
  // per tensor and layer (each a launch on the host's critical path); a model in another
  // dtype hands fp32 over. fp32 unless a cache says otherwise.
  virtual at::ScalarType attend_dtype() const { return at::kFloat; }
};

}  // namespace kvbench
