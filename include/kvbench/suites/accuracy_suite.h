// The `accuracy` suite: per-sample scores of a method against references and against the full
// cache on the same prompts (seed paper, finding 3: averages hide per-sample failures).
// Prompts come from a synthetic task of the task factory (passkey, RULER-style needles,
// variable tracking, common words, key-value retrieval) or from a LongBench- or RULER-format
// JSONL file. Both caches generate greedily to EOS (capped), one request at a time, so every
// sample's score, output, length, timings and KV bytes sit in one record. The summary has
// per-task means, agreement with the full cache, negative samples by the seed paper's rule
// (with a theta sweep), and paired statistics: a bootstrap interval of the score difference
// and, for pass/fail tasks, McNemar's exact test.
#pragma once

#include <string>
#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class AccuracySuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "per-sample scores against references and the full cache: agreement, negative samples, "
      "bootstrap interval of the score difference, McNemar's test";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

// The seed paper's negative samples: within each task, a sample whose full-cache score reaches
// the task's mean (or median, `use_median`) of full-cache scores, is above 0, and whose method
// score is at most (1 - theta) times it.
std::vector<bool> negative_samples(const std::vector<std::string>& tasks,
                                   const std::vector<double>& full,
                                   const std::vector<double>& method, double theta,
                                   bool use_median);

class Tokenizer;
// Stop ids LongBench's pred.py adds for a data set beside the model's EOS: for samsum the
// newline's token (tok.encode("\n")'s last id), whose output is one line; none for the others.
// Where there are any, the first token may be no stop id (pred.py's min_length).
std::vector<int64_t> longbench_extra_stop_ids(const std::string& dataset, const Tokenizer& tok);

}  // namespace kvbench
