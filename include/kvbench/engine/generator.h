// Batched generation: one packed prefill of every prompt (or of prefill_group prompts at a
// time), then decode steps over the sequences still running, each stopping on an EOS id or
// max_new_tokens. Every step is timed, so suites get TTFT, per-token times and per-step batch
// sizes from one call. The sequences it adds to the cache are removed when it returns or throws.
#pragma once

#include <string>
#include <vector>

#include "kvbench/engine/sampler.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/model/transformer.h"

namespace kvbench {

struct GenerationConfig {
  int64_t max_new_tokens = 32;
  std::vector<int64_t> eos_token_ids;  // empty: run to max_new_tokens
  bool ignore_eos = false;             // fixed-length generation for throughput runs
  SamplingParams sampling;             // sequence i samples with seed sampling.seed + i
  // Ids the first token may not be (their logits set to -inf at the prefill's sampling): a
  // minimum length of one token over these stop ids, as transformers' min_length processor.
  std::vector<int64_t> first_token_suppressed;
  // The prefill's sequences per forward: 0 packs them all into one; n > 0 prefills them n at a
  // time, each group's prompts entering every layer before the next group's, so a batch whose
  // packed prefill would not fit memory can still decode together. The groups run in one step:
  // every first token is sampled (and timed) after the last group.
  int64_t prefill_group = 0;
  // When set (a clock over forward_phase_names()), every step is split into the forward's
  // phases: GenerationResult::prefill_phase_s and decode_phase_s. The marks cost host time, so
  // timed generations leave it unset.
  PhaseClock* phases = nullptr;
};

struct SequenceResult {
  std::vector<int64_t> tokens;  // generated ids, EOS included when it stopped there
  std::string stop_reason;      // "eos" or "length"
  // One per token, since the sequences were added (after the cache's reserve), as the prefill's
  // clock starts.
  std::vector<double> token_times_s;
};

struct GenerationResult {
  std::vector<SequenceResult> sequences;
  double prefill_s = 0;  // the prefill's forwards (one, or one per prefill_group) + first sampling
  std::vector<double> decode_step_s;  // one per decode step
  // Of each decode step, the time until the forward pass returned, before its logits were
  // read back, less what the KV cache waited for the device inside it
  // (KVCache::device_wait_seconds). On a GPU that is the host issuing the step's launches
  // (they run asynchronously): near the step's time, the step is bound by the host, not by
  // the bytes it reads. On the CPU the forward is the step's work itself.
  std::vector<double> decode_step_host_s;
  std::vector<int64_t> decode_step_batch;  // sequences in each decode step
  // The K/V bytes held after each decode step, padding excluded: what its attention read (its
  // own token included), for the bytes a step moves beside its time.
  std::vector<uint64_t> decode_step_kv_bytes;
  // Of those times, the part the KV cache spent on retention work (KVCache::retention_seconds:
  // the policy's scores and counts, selection, eviction): the prefill's and each decode step's.
  double prefill_retention_s = 0;
  std::vector<double> decode_step_retention_s;
  uint64_t peak_kv_bytes = 0;
  StorageBytes peak_storage;  // measured K/V state at the peak
  StorageBytes peak_nominal;  // the method's formula for the same tokens
  // The most bytes the cache's storage occupied after a step (KVCache::allocated_bytes: free
  // pool pages and spare buffer rows included); generate() reserves the cache's storage for its
  // prompts first (KVCache::reserve).
  uint64_t peak_allocated_bytes = 0;
  // The retention policy's bookkeeping at the peak (KVCache::retention_bytes), beside the K/V
  // state of peak_storage.
  uint64_t peak_retention_bytes = 0;
  int64_t peak_tokens = 0;  // tokens entered (all sequences) at the peak
  // Tokens held per KV head at each layer at the peak, summed over sequences: peak_tokens per
  // layer without eviction, fewer with a retention policy.
  std::vector<int64_t> peak_kept_tokens;
  int64_t prompt_tokens = 0;
  // With GenerationConfig::phases: seconds per phase (forward_phase_names()) of the prefill
  // and of each decode step; empty without.
  std::vector<double> prefill_phase_s;
  std::vector<std::vector<double>> decode_phase_s;
};

// Reserves the cache's storage for the prompts and max_new_tokens (KVCache::reserve), adds one
// cache sequence per prompt, generates, and removes them again.
GenerationResult generate(const Transformer& model, KVCache& cache,
                          const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationConfig& config);

}  // namespace kvbench
