#include "kvbench/kv/pyramidkv_policy.h"

#include <cmath>

#include "kvbench/core/error.h"
#include "kvbench/kv/snapkv_policy.h"

namespace kvbench {

int64_t pyramidkv_layer_budget(int64_t budget, int64_t window, double beta, int64_t layer,
                               int64_t num_layers, int64_t length) {
  KVB_CHECK(num_layers >= 1 && layer >= 0 && layer < num_layers, "pyramidkv: layer ", layer, " of ",
            num_layers);
  if (length <= budget) return length;  // the prompt is kept whole
  if (num_layers == 1) return budget;
  const double capacity = static_cast<double>(budget - window);
  double min = capacity / beta, max = 2 * capacity - min;
  if (max >= static_cast<double>(length - window)) {
    max = static_cast<double>(length - window);
    min = 2 * capacity - max;
  }
  const double step = (max - min) / static_cast<double>(num_layers - 1);
  // std::nearbyint rounds to nearest, halves to even (the default rounding mode), as Python's
  // round() in kvpress.
  return static_cast<int64_t>(std::nearbyint(max - static_cast<double>(layer) * step)) + window;
}

PyramidKvPolicy::PyramidKvPolicy(int64_t budget, int64_t window, int64_t kernel,
                                 std::string pooling, double beta)
    : budget_(budget), window_(window), kernel_(kernel), pooling_(std::move(pooling)), beta_(beta) {
  KVB_CHECK(window >= 1 && budget > window, "pyramidkv: budget (", budget,
            ") must exceed the observation window (", window, ")");
  KVB_CHECK(kernel >= 1 && kernel % 2 == 1, "pyramidkv: kernel must be odd, got ", kernel);
  KVB_CHECK(pooling_ == "max" || pooling_ == "avg", "pyramidkv: pooling must be max or avg");
  KVB_CHECK(beta >= 1, "pyramidkv: beta must be >= 1, got ", beta);
}

nlohmann::json PyramidKvPolicy::params() const {
  return {{"budget", budget_},
          {"window", window_},
          {"kernel", kernel_},
          {"pooling", pooling_},
          {"beta", beta_}};
}

int64_t PyramidKvPolicy::budget(const RetentionInput& in) const {
  return pyramidkv_layer_budget(budget_, window_, beta_, in.layer, in.num_layers, in.length);
}

at::Tensor PyramidKvPolicy::select(const RetentionInput& in) const {
  return snapkv_select(in, budget(in), window_, kernel_, pooling_, "pyramidkv");
}

}  // namespace kvbench
