// Pieces shared by the model suites: synthetic prompts (token ids, as llama-bench feeds),
// the cell's cache, and memory checks made before anything large is allocated.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/engine/generator.h"
#include "kvbench/kv/kv_cache.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

// `count` prompts of `tokens` ids drawn uniformly from [0, vocab), seeded. The timing suites
// seed them by the run (its seed and the generation's index), never by the cell, so every
// method of a run times the same ids.
std::vector<std::vector<int64_t>> synthetic_prompts(int64_t count, int64_t tokens, int64_t vocab,
                                                    uint64_t seed);
// Throws Error when the run asks for a GPU without the paged cache (the only GPU cache).
void require_device_support(const CellContext& ctx, const std::string& suite);
// The cell's KV cache for the run's model and the cell's method.
std::unique_ptr<KVCache> make_cell_cache(const CellContext& ctx);
// The full cache (the run's KV dtype and attention backend) that the comparison suites
// (fidelity, output_length, accuracy) measure a method against.
std::unique_ptr<KVCache> make_baseline_cache(const CellContext& ctx);
// A bound on the tokens of a text of `utf8_bytes` bytes before any tokenizer is loaded (memory
// estimates): its bytes, plus a template's BOS and EOS and a prepended word-boundary mark. A
// byte-level BPE token spans at least one byte, and a byte-fallback one exactly one.
inline int64_t text_token_bound(size_t utf8_bytes) { return static_cast<int64_t>(utf8_bytes) + 3; }
// What memory plans size a text prompt at (they refuse a run whose estimate passes 80% of the
// memory, so a bound 3-4x too high, squared by the prefill's attention scores, would refuse
// runs that fit): a vocabulary under 1024 entries is (nearly) byte-level, text_token_bound;
// larger ones a third of the bytes (Llama-3's and Qwen's BPE average 3.3-4.5 bytes per token
// on English and code, fewer on other scripts).
inline int64_t text_token_estimate(size_t utf8_bytes, int64_t vocab_size) {
  return vocab_size < 1024 ? text_token_bound(utf8_bytes)
                           : static_cast<int64_t>(utf8_bytes / 3) + 3;
}
// K+V bytes per token of an fp32 full cache: the largest uncompressed cache a run can hold,
// for memory estimates of suites that keep a baseline cache too.
double full_cache_bytes_per_token(const ModelConfig& config);
// 16 hex digits: FNV-1a of the prompt's token ids, so records can be joined across runs.
std::string prompt_hash(const std::vector<int64_t>& tokens);
// The same for a generation's batch of prompts, in order (ids joined with a separator no id
// takes), so timing records show which inputs two cells timed.
std::string prompts_hash(const std::vector<std::vector<int64_t>>& prompts);
// Throws Error "<what> needs X but only Y of memory is available" when `bytes` exceeds 80% of
// MemAvailable, so an impossible cell fails cleanly instead of meeting the OOM killer.
void check_memory_fits(uint64_t bytes, const std::string& what);
// The memory facts of a generation's peak KV state, for reports: measured payload/metadata,
// the method's formula, bytes per token, bits per stored value, the ratio to an fp16 cache, and
// whether measured and nominal disagree (compression that did not happen as claimed).
nlohmann::json kv_memory_json(const GenerationResult& result, const ModelConfig& config);
// One line under a table for kv_memory_json's object: "KV cache at peak: 502.8 KiB for 539
// tokens (7.46 bits/value, 0.47x fp16)", plus the kept share when a policy evicted. Empty when
// `kv_memory` is not such an object (a cell that generated nothing).
std::string kv_memory_note(const nlohmann::json& kv_memory);
// The warning of a kv_memory_json object whose measured bytes (less padding) and the method's
// formula disagree: both sizes and the difference, and, when a policy evicted and more is held
// than the formula counts, that pages keep evicted tokens until no layer or head keeps one in
// them. Empty when they agree (or `kv_memory` is not such an object).
std::string nominal_mismatch_warning(const nlohmann::json& kv_memory);
// The warning of a retention method (a policy that evicts: not Quest, which only reads fewer
// pages) whose kv_memory_json object shows every token kept at the peak: its budget covered
// the prompts, so the cell measured its codec alone. Empty otherwise.
std::string nothing_evicted_warning(const nlohmann::json& method, const nlohmann::json& kv_memory);
// That warning for a cell whose generations all kept every token (kept_every_token), or empty
// when the method's policy is not one that evicts.
std::string nothing_evicted_warning(const nlohmann::json& method);
// Whether every layer held every token at the generation's peak.
bool kept_every_token(const GenerationResult& r);
// Accumulates generations' step times and the KV cache's retention time within them.
struct RetentionTimes {
  std::vector<double> prefill_s, prefill_retention_s;  // one per generation
  std::vector<double> step_s, step_retention_s;        // one per decode step
  void add(const GenerationResult& result);
  // {"prefill_ms", "decode_step_ms": median retention time per prefill / decode step;
  //  "prefill_share", "decode_share": total retention time / total prefill / decode time}
  nlohmann::json to_json() const;
};
// Bytes of the weights of a model with this config held in `dtype`.
uint64_t model_weight_bytes(const ModelConfig& config, at::ScalarType dtype = at::kFloat);
// check_memory_fits on the CPU; on a GPU, `bytes` against 80% of the device's memory (when
// known). `what` names what needs them.
void check_fits_on(const ModelPlacement& placement, uint64_t bytes, const std::string& what);
// The memory a kv_budget_fraction is a fraction of, on `device`: on the CPU what is available
// (the weights are already out of it); on a GPU its total less the weights (`weight_bytes`).
// 0 when unknown. `once_per_run` (a cell's run, its model loaded): on the CPU the reading of
// the first such call for a model of `weight_bytes`, kept for the rest of the process (a grid's
// runs may load other models), so every cell of a run gets one budget
// and its methods compare at one pool size (memory an earlier cell's allocator kept would
// otherwise shrink later cells' budgets); otherwise (estimates) a fresh reading.
uint64_t kv_budget_base_bytes(const at::Device& device, uint64_t weight_bytes,
                              bool once_per_run = false);
// Peak bytes of generating `new_tokens` after `prompt` tokens for `batch` sequences, beyond the
// weights: the uncompressed KV cache, the prefill's activations (in `compute_dtype`; a packed
// prefill's, or with `prefill_group` > 0 those of that many sequences, as
// GenerationConfig::prefill_group runs it), one sequence's prefill attention scores, and the
// fp32 copy of one layer's K/V that the reference attention reads.
uint64_t generation_bytes(const ModelConfig& config, double kv_bytes_per_token, int64_t batch,
                          int64_t prompt, int64_t new_tokens,
                          at::ScalarType compute_dtype = at::kFloat, int64_t prefill_group = 0);
// Upper bound of the method's KV bytes per token over all layers; throws Error when the method
// cannot run on this model (e.g. a quantization group that does not divide head_dim).
// `paged`: on the paged path (`kernel_path`: its kernels' code, CacheLayout::kernel_path),
// where latent rows are stored padded; with `context` > 0, also of sequences of `context`
// tokens as the paged cache stores them (whole pages, latent ones too, KIVI's rings and GEAR's
// exact buffers whole from the first token: at a short context more per token than its formula).
double method_kv_bytes_per_token(const nlohmann::json& method, const ModelConfig& config,
                                 at::ScalarType dtype, bool paged = false, bool kernel_path = false,
                                 int64_t context = 0);
// What the method's cache holds once for all its sequences, by formula: a low-rank codec's
// fitted bases (fp32 at its rank) and, on the paged path, the latent caches' own copies of them
// (latent_bases_bytes); 0 for every other method.
uint64_t method_shared_bytes(const nlohmann::json& method, const ModelConfig& config,
                             at::ScalarType dtype, bool paged, bool kernel_path);
// generation_bytes for the cell's model, checked against available memory (check_memory_fits).
// `baseline_bytes_per_token`: added to the method's, for the comparison suites, which hold a
// full cache beside the method's (fidelity steps both at once; accuracy and output_length
// generate one after the other, but a paged baseline keeps its pool's pages): see
// baseline_bytes_per_token.
void check_generation_fits(const CellContext& ctx, int64_t batch, int64_t prompt,
                           int64_t new_tokens, const std::string& suite, int64_t prefill_group = 0,
                           double baseline_bytes_per_token = 0);
// K+V bytes per token of make_baseline_cache's cache: the full cache in the run's KV dtype.
double baseline_bytes_per_token(const CellContext& ctx);

}  // namespace kvbench
