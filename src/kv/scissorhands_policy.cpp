#include "kvbench/kv/scissorhands_policy.h"

#include <limits>

#include "kvbench/core/error.h"

namespace kvbench {

ScissorHandsPolicy::ScissorHandsPolicy(int64_t budget, int64_t recent, int64_t history,
                                       EvictionTiming timing)
    : budget_(budget), recent_(recent), history_(history), timing_(timing) {
  KVB_CHECK(recent >= 1 && budget > recent, "scissorhands: budget (", budget,
            ") must exceed the protected recent window (", recent, ")");
  KVB_CHECK(history >= 1, "scissorhands: history must be >= 1, got ", history);
}

nlohmann::json ScissorHandsPolicy::params() const {
  return {{"budget", budget_},
          {"recent", recent_},
          {"history", history_},
          {"evict", eviction_timing_name(timing_)}};
}

at::Tensor ScissorHandsPolicy::select(const RetentionInput& in) const {
  KVB_CHECK(in.low_counts.defined(), "scissorhands: the cache gave no low-attention counts");
  const at::Tensor& pos = in.positions;  // [kv_heads, held]
  at::Tensor recent = pos.ge(in.length - recent_);
  // Fewest low-attention counts first; the protected window is kept whole.
  at::Tensor scores = in.low_counts.to(at::kDouble)
                          .neg()
                          .masked_fill(recent, -std::numeric_limits<double>::infinity());
  at::Tensor keep = top_tokens(scores, budget_ - recent_);
  const at::Tensor window = newest_indices(in, in.length - recent_);
  return std::get<0>(at::cat({keep, window}, 1).sort(1)).contiguous();
}

std::vector<at::Tensor> ScissorHandsPolicy::select_batch(
    const std::vector<const RetentionInput*>& inputs) const {
  const std::optional<NewestBatch> b = newest_batch(inputs, recent_, &RetentionInput::low_counts);
  if (!b) return RetentionPolicy::select_batch(inputs);
  // select()'s operators over [inputs, kv_heads, held].
  const at::Tensor scores = b->scores.to(at::kDouble)
                                .neg()
                                .masked_fill(b->positions.ge(b->lengths - recent_),
                                             -std::numeric_limits<double>::infinity());
  return top_and_newest(*b, scores, budget_ - recent_);
}

}  // namespace kvbench
