// PyramidKV (Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
// Information Funneling"), prefill only: SnapKV's scores and selection, with a budget per layer
// that decreases linearly from the first layer to the last around the average budget C.
//   min = (C - W) / beta,  max = 2 (C - W) - min;  if max >= T - W: max = T - W,
//   min = 2 (C - W) - max;  layer l of L keeps round(max - l (max - min) / (L - 1)) + W
// for a prompt of T > C tokens (a prompt of T <= C is kept whole; one layer keeps C). The step
// is the exact fraction and the result is rounded to nearest, halves to even (kvpress's
// rule), so the last layer keeps min + W and the layers together keep about L C; the
// KVCache-Factory code steps by the integer (max - min) // (L - 1) instead and overshoots L C.
// Budgets never increase from one layer to the next.
#pragma once

#include <string>

#include "kvbench/kv/retention_policy.h"

namespace kvbench {

// Tokens per KV head layer `layer` of `num_layers` keeps after a prefill of `length` tokens.
int64_t pyramidkv_layer_budget(int64_t budget, int64_t window, double beta, int64_t layer,
                               int64_t num_layers, int64_t length);

class PyramidKvPolicy final : public RetentionPolicy {
 public:
  PyramidKvPolicy(int64_t budget, int64_t window, int64_t kernel, std::string pooling, double beta);
  std::string name() const override { return "pyramidkv"; }
  nlohmann::json params() const override;
  RetentionNeeds needs() const override { return RetentionNeeds::kWindowScores; }
  EvictionTiming timing() const override { return EvictionTiming::kAfterPrefill; }
  int64_t observation_window() const override { return window_; }
  int64_t budget(const RetentionInput& in) const override;
  at::Tensor select(const RetentionInput& in) const override;

 private:
  int64_t budget_, window_, kernel_;
  std::string pooling_;
  double beta_;
};

}  // namespace kvbench
