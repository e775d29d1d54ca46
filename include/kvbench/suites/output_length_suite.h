// The `output_length` suite: does compression change how long the model talks? Every prompt is
// generated to EOS (with a cap; EOS is never ignored, which would hide the drift) with the full
// cache and with the method, on the same sampling seeds, one request at a time so each
// sample's latency and KV bytes are its own. Per sample: both lengths and
// D = (L_full - L_method) / L_full x 100. Over the samples: the shares >= 50% longer and
// shorter, the Wilcoxon signed-rank test of the pairs and paired-bootstrap intervals of D's
// mean and the length ratio, Kolmogorov-Smirnov and Wasserstein distances between the length
// distributions, the rate of runaway generations (cap reached without EOS), and the
// end-to-end latency cost. Control runs of the full cache with other sampling seeds at the same
// temperature (one by default) show how much length moves from sampling noise alone, and at
// other temperatures (0.9 and 1.1 by default, the seed paper's finding 2) how much it moves with
// the temperature; none when greedy.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/core/stats.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class OutputLengthSuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "generation length to EOS per sample against the full cache (shift D, shares >= 50% "
      "longer/shorter, KS and Wasserstein distances, runaway rate, latency cost), with "
      "seed and temperature controls";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

// Length statistics of a method against a baseline, over the same samples in the same order.
struct LengthShift {
  size_t samples = 0;
  double mean_baseline = 0, mean_other = 0;
  double d_mean = 0, d_median = 0;  // D = (L_base - L_other) / L_base x 100, per sample
  double share_longer_50 = 0;       // D <= -50: at least 50% longer than the baseline
  double share_shorter_50 = 0;      // D >= 50
  double ks_statistic = 0, ks_p_value = 1, wasserstein = 0;
  // The pairs as pairs: the Wilcoxon signed-rank test of L_other - L_base (how many pairs
  // differ, its statistic and p-value), and paired-bootstrap 95% intervals (samples drawn
  // with both their lengths) of d_mean and of the ratio of mean lengths (null in to_json below
  // 2 samples, where a resample can only repeat the one sample).
  int64_t pairs_differing = 0;
  double wilcoxon_statistic = 0, wilcoxon_p_value = 1;
  Interval d_mean_ci95, length_ratio_ci95;
};
LengthShift length_shift(const std::vector<double>& baseline, const std::vector<double>& other);
nlohmann::json to_json(const LengthShift& s);

}  // namespace kvbench
