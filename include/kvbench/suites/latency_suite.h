// The `latency` suite: per-request time to first token (TTFT), time per output token (TPOT),
// inter-token latency and end-to-end latency, over repeated fixed-length generations with
// warm-up excluded. Output length is fixed (EOS ignored) so latency is comparable across
// methods; how methods change output length is the output_length suite's question.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class LatencySuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "TTFT, TPOT, inter-token and end-to-end latency per request (median, p90, p99, bootstrap "
      "CI) over repeated generations";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

}  // namespace kvbench
