// The `throughput` suite: offline batches over a grid of batch x prompt length x generation
// length. Prefill tok/s from the timed packed prefill and each sequence's first sampling (the
// capacity view's batch prefills one sequence at a time); decode tok/s from per-step timings
// (batch / median step time); KV bytes at their peak over the steps (KIVI's comes before the
// end). Every step time is kept.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

// The warning for a throughput record whose decode steps spread widely (p90 above 3x the
// median: other work took the cores, or the step is bimodal), naming the range; "" otherwise.
std::string decode_spread_warning(const nlohmann::json& record);

class QuestPolicy;
struct ModelConfig;
// The K/V bytes a Quest decode step reads, from what it holds (`held_bytes`: every token, plus
// the page bounds of the layers past the dense ones) at `held_tokens` per sequence: the dense
// layers' tokens, tokens_read of each sparse layer's (its chosen pages), and the bounds it
// ranks them by; everything but the bounds while no layer is over the budget.
double quest_step_read_bytes(const QuestPolicy& quest, const ModelConfig& config, int64_t batch,
                             int64_t held_tokens, double held_bytes);

class ThroughputSuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "prefill and decode tokens/s and KV bytes over a grid of batch x prompt length x "
      "generation length";
  static std::vector<ParamSpec> param_specs();
  // The capacity view's lengths (capacity_context, when set, at least capacity_new_tokens):
  // ConfigError naming the key. validate and run check the same.
  static void check_params(const nlohmann::json& params);

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

}  // namespace kvbench
