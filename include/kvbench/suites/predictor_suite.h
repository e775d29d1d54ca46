// The `predictor` suite: the seed paper's throughput predictor and router, done on measured
// data. It profiles the method's decode step time on this device over a grid of batch x context
// (the model with the method's cache; medians of every timed step over several repeats,
// interleaved so drift spreads over every point), fits two interpolators (bilinear and least
// squares, step_time_predictor.h) and reports their accuracy 1 - |pred - true| / true on held-out
// (batch, context) points measured in the same run but not in the grid. Then, optionally, a
// routing simulation (router.h): N replicas whose step times come from the fitted predictor
// serve the same seeded Poisson requests under round-robin and predictor-aware routing; mean and
// p99 end-to-end latency of each. docs/serving.md says what each part assumes.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/serving/router.h"
#include "kvbench/serving/step_time_predictor.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class PredictorSuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "throughput predictor: decode step time profiled over batch x context, interpolated "
      "(bilinear, least squares), accuracy on held-out points; routing simulation over N "
      "replicas (round robin vs least predicted completion), mean and p99 e2e latency";
  static std::vector<ParamSpec> param_specs();
  // The rules across its parameters that need no model (a grid of two points on each axis,
  // held-out points inside it and not all on it, the routing's length ranges): ConfigError
  // naming the key. validate and run check the same.
  static void check_params(const nlohmann::json& params);

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

// The routing simulation's step costs from fitted predictors: decode(batch, mean context of the
// decoding sequences) + prefill(prompts), where prefill = a + b * sum(P) + c * sum(P^2) (the
// per-token work and the quadratic attention of each prompt). A step with both pays both
// intercepts (an overestimate of the mixed step's fixed cost by one step's overhead). Predictions
// are floored at 1 microsecond so that an extrapolated model never gives a step for free.
class PredictedStepCost final : public StepCostModel {
 public:
  PredictedStepCost(const StepTimeModel& decode, std::vector<double> prefill_coefficients)
      : decode_(decode), prefill_(std::move(prefill_coefficients)) {}
  double step_s(const std::vector<int64_t>& decode_contexts,
                const std::vector<int64_t>& prefill_prompts) const override;

 private:
  const StepTimeModel& decode_;
  std::vector<double> prefill_;  // a, b, c
};

}  // namespace kvbench
