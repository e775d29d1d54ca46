// The `serving` suite: the tiny-to-real model served under load. Requests arrive as a seeded
// Poisson process at each of `rates` (requests per second), with prompt and output lengths
// drawn uniformly from ranges; a continuous-batching scheduler over a paged KV pool sized by a
// memory budget (the method's bytes per block decide how many blocks fit) admits, decodes,
// preempts and recomputes them, and the engine runs every step on the model with the method's
// KV cache. Per rate: TTFT, TPOT, ITL and e2e percentiles, request and token throughput,
// goodput under SLO thresholds, KV memory (pool and measured) and preemptions. docs/serving.md
// says what this simulates and what it does not.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

// The serving parameters' rules across keys (trace vs rates, requests vs duration_s, the
// prompt and output distributions); throws Error. Also run at validate (suite_registry).
// `given`: the suite entry as written, so a key set to its default value still counts as set;
// null: a key counts as set where it differs from its default.
void check_serving_params(const nlohmann::json& params,
                          const nlohmann::json& given = nlohmann::json());
// The rules across the serving parameters and a method, at validate: a policy that selects from
// the whole prefill cannot run with chunked_prefill. Throws Error.
void check_serving_method(const nlohmann::json& params, const nlohmann::json& method,
                          const std::string& device);

class ServingSuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "online serving: Poisson (or gamma) arrivals at each rate (or a trace's), lengths from "
      "distributions, "
      "ShareGPT conversations or the trace, continuous batching (optional chunked prefill) over "
      "a paged KV pool sized by a memory budget (preemption and recompute when it runs out); "
      "TTFT/TPOT/ITL/e2e p50/p90/p99, throughput, goodput under SLOs, KV memory, preemptions";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

// Bytes one block of `block_size` tokens takes in the method's format over all layers: the
// steady-state (marginal) cost of block_size more tokens by the codec's formula (and Quest's
// page bounds on its sparse layers), measured over
// a long stretch of tokens, so a per-sequence full-precision window such as KIVI's residual is
// not in it (method_window_blocks charges that). Throws Error when the method cannot run on
// this model. `paged` (`kernel_path`: CacheLayout::kernel_path): the paged path's stored bytes
// (latent rows padded). A format whose bytes depend on how tokens arrived (GEAR): the larger of
// the rates of one append and of single-token appends.
double method_block_bytes(const nlohmann::json& method, const ModelConfig& config,
                          at::ScalarType dtype, int64_t block_size, bool paged = false,
                          bool kernel_path = false);

// The bookkeeping a block's tokens may need beside their K and V under the method's retention
// policy, over all layers (capacity.h: the index and, while the policy records during decode,
// its record, as held; a bound, as a sequence holds at most its blocks' tokens): what the pool
// charges each block on top of method_block_bytes. 0 without an evicting policy. `dtype`,
// `paged` and `kernel_path` as CacheLayout::for_method.
double method_retention_block_bytes(const nlohmann::json& method, const ModelConfig& config,
                                    at::ScalarType dtype, int64_t block_size, bool paged = false,
                                    bool kernel_path = false);

// What a prefill keeps beyond that per token of its context while it runs: a layer's
// bookkeeping is formed as the layer attends the prompt and goes to its held state with that
// layer's selection, before the next layer's forms, so one layer's entering state less its
// held one (the record of a policy that selects once after the prefill; 0 for the others).
double method_prefill_retention_bytes(const nlohmann::json& method, const ModelConfig& config,
                                      at::ScalarType dtype, bool paged = false,
                                      bool kernel_path = false);

// Blocks each sequence needs beyond ceil(tokens / block_size) so that the pool's charge covers
// the method's formula for every length up to `longest` tokens:
//   the least W >= 0 with (ceil(T / block_size) + W) * bytes_per_block >= formula(T)
// for T = 1 .. longest (formula over all layers; for GEAR the most over a prefill of any
// length then decode steps, Codec::sequence_nominal_bytes). 0 for a format whose bytes grow
// linearly (the full cache, int8/int4, retention over them); KIVI's full-precision residual
// needs a few, fp8's per-sequence scales one.
// `paged`: what the paged cache stores in place of the formula where it pages the method's
// own keys and values (paged_sequence_bytes_of) or latents: whole pages, less `slot`, what the
// cell's cache holds for each sequence slot (KVCache::slot_bytes), which the budget charges per
// slot instead; GEAR's blocks, less the exact rows its slot's buffer holds.
int64_t method_window_blocks(const nlohmann::json& method, const ModelConfig& config,
                             at::ScalarType dtype, int64_t block_size, double bytes_per_block,
                             int64_t longest, bool paged = false, double slot = 0);

}  // namespace kvbench
