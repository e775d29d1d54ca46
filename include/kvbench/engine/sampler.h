// Next-token choice: greedy (temperature 0) or seeded temperature + nucleus (top-p) sampling,
// with Hugging Face's semantics (the smallest set of tokens whose probability reaches top_p,
// at least one token kept).
#pragma once

#include <ATen/ATen.h>

#include "kvbench/core/rng.h"

namespace kvbench {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;        // (0, 1]
  uint64_t seed = 0;
};

// Greedy choice of each row of logits [rows, vocab] (on any device): the argmax ids [rows]
// int64 on the host (the first of equal maxima), -1 where the row's greatest logit is not
// finite (NaN weights or an overflow: no token can be chosen). Only the ids come back from a
// GPU, not the logits.
at::Tensor greedy_ids(const at::Tensor& logits);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: [vocab] fp32. Greedy ties resolve to the lowest id. -1 when the greatest logit is
  // not finite (a NaN anywhere, +inf, or every one -inf): no token can be chosen from them.
  int64_t next(const at::Tensor& logits);

 private:
  int64_t draw_in_id_order(const at::Tensor& probs);  // top_p 1: no sort

  SamplingParams params_;
  Rng rng_;
};

}  // namespace kvbench
