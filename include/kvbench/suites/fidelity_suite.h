// The `fidelity` suite (llama.cpp's KL-divergence mode, for KV caches): teacher-forced over a
// text or token corpus, each method's next-token distributions against the full cache's on the
// same tokens — KL divergence (mean, p99, max), top-1 agreement and both perplexities. It is
// meaningful on random weights too: it measures how far compression moves the model, not how
// good the model is.
//
// Each window prefills `prefix_tokens` (prefill attention reads the keys and values as
// computed, except a low-rank codec's, which attends its reconstruction: methods.md),
// then feeds the corpus's next `eval_tokens` tokens one decode step at a time through both
// caches; every decode step's distribution is scored.
#pragma once

#include <vector>

#include "kvbench/core/param_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

class FidelitySuite final : public Suite {
 public:
  static constexpr const char* kSummary =
      "teacher-forced next-token KL divergence, top-1 agreement and perplexity against the "
      "full cache on the same tokens";
  static std::vector<ParamSpec> param_specs();

  uint64_t estimate_bytes(const EstimateContext& ctx) const override;
  CellOutput run(const CellContext& ctx) override;
  Table summary_table(const CellOutput& output) const override;
};

// The divergence of one decode step, computed in float64 from two logit rows.
struct StepFidelity {
  double kl = 0;           // KL(full || method), nats
  bool top1_agree = true;  // the method's argmax is one of the full cache's (ties count)
  double nll_full = 0;     // -log p_full(target)
  double nll_method = 0;   // -log p_method(target)
};
StepFidelity step_fidelity(const at::Tensor& full_logits, const at::Tensor& method_logits,
                           int64_t target);

}  // namespace kvbench
