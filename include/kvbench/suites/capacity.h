// The capacity view of the `throughput` suite (issue 9, item 4): how many sequences of a given
// context a KV memory budget holds for a method, by the method's exact byte formula, and the
// decode throughput measured at that batch.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/kv/codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/retention_policy.h"
#include "kvbench/model/model_config.h"

namespace kvbench {

// How the run's cache stores a method: the index it keeps per held token and KV head beside K
// and V under an evicting policy (not `full`, not Quest), to know which tokens it holds (the
// policy's records, H2O's sums and ScissorHands' history, come on top:
// record_bytes_per_token); the slots its K and V take; and the row widths of its pages.
struct CacheLayout {
  // The paged cache: one block table serves every layer, so a prefill takes its prompt's pages
  // at every layer at once. false: the CPU cache, whose layers each store what they hold.
  bool paged = false;
  uint64_t before_selection = 0;  // from the prefill until the policy's first selection
  uint64_t after_selection = 0;
  bool exact = true;  // false: after_selection is an upper bound
  // > 0: the paged cache compacts the kept tokens into pages of this many tokens
  // (paged_compacts), and every layer holds compacted_slots of them, not its own kept tokens:
  // the longest layer's, and under a policy evicting during decode the free slots it lets grow
  // before compacting again. 0: each layer holds its kept tokens.
  int64_t compacting_page = 0;
  // > 0: the paged cache lists the kept tokens in place in pages of this many tokens (KIVI's,
  // Palu's: paged_retention_of) and frees a page only once no head of any layer keeps a token
  // in it: a policy keeping a span (StreamingLLM: its sinks and newest tokens) holds those
  // pages, any other may hold every page it entered (a selection per head scatters over them).
  // A bound either way.
  int64_t listing_page = 0;
  // The paged cache's bytes per byte of the codec's formula (paged_storage_factor): latent
  // pages whose rows are wider than the rank (multiples of 32, or the kernels' 64 and 128).
  double storage_factor = 1.0;
  // Pages of the method's own keys and values (paged_sequence_bytes_of; page 0: none): a
  // sequence's slots take whole pages, and KIVI's rings or fp8's scales come beside them from
  // its first token. What the paged cache stores, empty slots included, not the codec's
  // formula: for KIVI up to twice its window's fp16 rows and a window of page slots more.
  PagedSequenceBytes pages;
  // > 0: latent pages (kvproj's, Palu's) of this many slots: a sequence's slots in whole pages,
  // each at the formula's rate times storage_factor.
  int64_t latent_page = 0;
  // Latent pages: the bytes per layer and KV head the cache holds of its own besides the
  // codec's bases (latent_bases_bytes: its copies of them at the stored width), once per cache.
  uint64_t latent_bases = 0;
  // GEAR's block cache: each sequence's exact buffer of `exact_buffer` rows, allocated whole,
  // `exact_row_bytes` per row and KV head (a key and a value in the model dtype); the codec's
  // formula counts the rows in use (tokens mod buffer), so the rest come on top. 0: none.
  int64_t exact_buffer = 0;
  uint64_t exact_row_bytes = 0;
  // Bytes per layer a sequence holds beside the formula's for `tokens` (GEAR's idle rows).
  uint64_t idle_buffer_bytes(int64_t tokens, int64_t num_kv_heads) const {
    if (exact_buffer == 0) return 0;
    return uint64_t(exact_buffer - tokens % exact_buffer) * exact_row_bytes *
           uint64_t(num_kv_heads);
  }
  // The CPU cache: int64 positions of every held token from the first on (8 and 8, exact).
  // The paged cache, a bound in both states: int32 lists of at most the held tokens (4), a
  // second copy where its kernels read them (4; `kernel_path`: on a GPU, or the kernel path
  // emulated on the CPU), and the int64 positions of a compacted layer's slots (8): at most
  // 12, or 16 on the kernel path. It keeps less where it can: nothing before a selection but
  // a compacting prefill's layers, GEAR's block cache and the latent caches of shared heads
  // fewer; on a GPU 12 of the 16 bytes are host memory. `ring`: the paged cache keeps the
  // policy's tokens in a ring of slots (paged_retention_of), listing none: 0, exact.
  static CacheLayout of(bool paged, bool kernel_path, bool ring = false);
  // of() for a resolved method entry stored as `dtype` on a model of `head_dim`, its ring and
  // compaction asked of the paged cache (paged_retention_of), and its rows' widths.
  static CacheLayout for_method(const nlohmann::json& method, at::ScalarType dtype,
                                int64_t head_dim, bool paged, bool kernel_path);
  // Whether a run's paged caches take the kernel path (`gpu`, or KVBENCH_PAGED_PATH=kernels on
  // the CPU): of()'s `kernel_path` for a run.
  static bool kernel_path(bool gpu);
};

// Bookkeeping per token held at one layer (all its KV heads) under `policy`: the index and,
// while the policy records, its record (record_bytes_per_token); `entering`: while the prompt
// enters, before the first selection (the record then too). 0 without an evicting policy
// (`full`, Quest).
uint64_t retention_bytes_per_token(const RetentionPolicy& policy, const ModelConfig& config,
                                   const CacheLayout& index, bool entering);

// KV bytes of one sequence that was prefilled with `prompt` tokens and decodes until `context`
// tokens have entered it (prompt + decoded), at its largest state on the way (bytes are not
// monotone in tokens: KIVI's window folds into groups), by the method's formula: per layer, the
// codec's nominal bytes (per-sequence windows such as KIVI's full-precision residual included) for
// the tokens the retention policy holds there — every token without a policy; min(context, budget)
// for a policy evicting during decode; min(prompt, budget) + (context - prompt) for one evicting
// once after the prefill — plus Quest's page bounds on its sparse layers; on a compacting paged
// cache (CacheLayout::compacting_page) the slots it holds at every layer instead. `shared`
// is what the codec holds once for every sequence (fitted bases), and a latent paged cache its
// copies of them (CacheLayout::latent_bases). Exact (GEAR's blocks as a prefill of the prompt,
// or of what a policy kept of it, then decode steps form them: Codec::sequence_nominal_bytes;
// on the paged path its exact buffers whole), except that a paged cache compacting during
// decode is bounded (`kv_exact`: its free slots between compactions depend on when it last
// compacted), and GEAR's when a prefill comes in chunks (its blocks then form per chunk).
// `prefill` is one sequence while its prompt enters, before a policy evicts: on the paged cache
// the codec's bytes for the whole prompt at every layer (one block table serves them all, its
// pages taken for the prompt before the layers attend); on the CPU cache each layer stores the
// whole prompt as it attends it and is cut to its held state by its selection before the next
// layer's enters, so every layer but the last held and the last one whole.
// `retention` is the held state's bookkeeping (CacheLayout and the policy's records, which a
// policy selecting once after the prefill keeps only until then), `prefill_retention` the
// prefill's: each layer's forms as that layer attends the prompt and is cut to its held
// state by the layer's selection, before the next layer's forms, so at most every layer but
// the last held and the last one's for the whole prompt. Not K/V bytes, but memory the batch
// needs.
struct SequenceKvBytes {
  uint64_t per_sequence = 0;
  uint64_t shared = 0;
  uint64_t prefill = 0;
  uint64_t retention = 0;
  uint64_t prefill_retention = 0;
  // Bookkeeping per token held at one layer (all its KV heads) in the held state: what a
  // measured cache's kept tokens cost (kv_memory.kept_tokens), wherever it is measured.
  uint64_t retention_per_held_token = 0;
  bool retention_exact = true;  // false: `retention` is an upper bound (CacheLayout)
  bool kv_exact = true;         // false: `per_sequence` is an upper bound (compaction)
  // Whole pages counted (CacheLayout::pages, latent_page) or GEAR's whole buffers
  // (exact_buffer): the cache's empty slots (its padding) are in `per_sequence` too.
  bool whole_pages = false;
  std::vector<int64_t> held_per_layer;  // tokens per KV head held at each layer at `context`

  // What `batch` sequences need when they enter one at a time, as a serving engine admits them:
  // batch - 1 of them held, and the last one's larger of its prefill and its held state;
  // bookkeeping included.
  uint64_t batch_bytes(int64_t batch) const;
};
SequenceKvBytes sequence_kv_bytes(const Codec& codec, const RetentionPolicy& policy,
                                  const ModelConfig& config, int64_t prompt, int64_t context,
                                  const CacheLayout& index);

// The largest batch b with batch_bytes(b) <= budget_bytes (0 when not even one sequence fits).
// Throws Error when per_sequence is 0.
int64_t largest_batch(double budget_bytes, const SequenceKvBytes& bytes);

}  // namespace kvbench
