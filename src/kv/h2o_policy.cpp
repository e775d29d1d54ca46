#include "kvbench/kv/h2o_policy.h"

#include <limits>

#include "kvbench/core/error.h"

namespace kvbench {

H2oPolicy::H2oPolicy(int64_t heavy, int64_t recent, bool normalize, EvictionTiming timing)
    : heavy_(heavy), recent_(recent), normalize_(normalize), timing_(timing) {
  KVB_CHECK(heavy >= 0 && recent >= 1, "h2o: heavy must be >= 0 and recent >= 1");
}

nlohmann::json H2oPolicy::params() const {
  return {{"heavy", heavy_},
          {"recent", recent_},
          {"normalize", normalize_},
          {"evict", eviction_timing_name(timing_)}};
}

at::Tensor H2oPolicy::select(const RetentionInput& in) const {
  KVB_CHECK(in.accumulated.defined(), "h2o: the cache gave no accumulated attention");
  const at::Tensor& pos = in.positions;  // [kv_heads, held]
  at::Tensor recent = pos.ge(in.length - recent_);
  at::Tensor scores = in.accumulated.to(at::kDouble);
  if (normalize_)
    scores = scores / (in.length - pos).to(at::kDouble);  // queries that saw each token
  // Heavy hitters come from outside the recent window, which is kept whole.
  scores = scores.masked_fill(recent, -std::numeric_limits<double>::infinity());
  at::Tensor heavy = top_tokens(scores, heavy_);
  const at::Tensor window = newest_indices(in, in.length - recent_);
  return std::get<0>(at::cat({heavy, window}, 1).sort(1)).contiguous();
}

std::vector<at::Tensor> H2oPolicy::select_batch(
    const std::vector<const RetentionInput*>& inputs) const {
  const std::optional<NewestBatch> b = newest_batch(inputs, recent_, &RetentionInput::accumulated);
  if (!b) return RetentionPolicy::select_batch(inputs);
  // select()'s operators over [inputs, kv_heads, held].
  at::Tensor scores = b->scores.to(at::kDouble);
  if (normalize_) scores = scores / (b->lengths - b->positions).to(at::kDouble);
  return top_and_newest(*b,
                        scores.masked_fill(b->positions.ge(b->lengths - recent_),
                                           -std::numeric_limits<double>::infinity()),
                        heavy_);
}

}  // namespace kvbench
