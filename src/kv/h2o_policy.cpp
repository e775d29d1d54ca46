#include "kvbench/kv/h2o_policy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvbench/core/error.h"

namespace kvbench {

H2oPolicy::H2oPolicy(int64_t heavy, int64_t recent, bool normalize, EvictionTiming timing,
                     H2oRatios ratios)
    : heavy_(heavy), recent_(recent), normalize_(normalize), timing_(timing), ratios_(ratios) {
  KVB_CHECK(heavy >= 0 && recent >= 1, "h2o: heavy must be >= 0 and recent >= 1");
  KVB_CHECK(ratios.heavy >= 0 && ratios.heavy <= 1 && ratios.recent >= 0 && ratios.recent <= 1,
            "h2o: heavy_ratio and recent_ratio must be in [0, 1]");
}

nlohmann::json H2oPolicy::params() const {
  nlohmann::json p = {{"normalize", normalize_}, {"evict", eviction_timing_name(timing_)}};
  if (ratios_.heavy > 0) {
    p["heavy_ratio"] = ratios_.heavy;
  } else {
    p["heavy"] = heavy_;
  }
  if (ratios_.recent > 0) {
    p["recent_ratio"] = ratios_.recent;
  } else {
    p["recent"] = recent_;
  }
  return p;
}

H2oPolicy::Counts H2oPolicy::counts(int64_t prompt) const {
  if (!budget_needs_prompt()) return {heavy_, recent_};
  KVB_CHECK(prompt >= 1,
            "h2o: heavy_ratio/recent_ratio are fractions of the prompt, and the cache gave no "
            "prompt length");
  // floor(), as the reference's int(ratio * length); the window keeps at least the newest.
  auto of_prompt = [&](double ratio) {
    return static_cast<int64_t>(std::floor(ratio * static_cast<double>(prompt)));
  };
  return {ratios_.heavy > 0 ? of_prompt(ratios_.heavy) : heavy_,
          ratios_.recent > 0 ? std::max<int64_t>(1, of_prompt(ratios_.recent)) : recent_};
}

int64_t H2oPolicy::budget(const RetentionInput& in) const {
  const Counts c = counts(in.prompt);
  return c.heavy + c.recent;
}

std::optional<int64_t> H2oPolicy::drops_lowest(int64_t prompt) const {
  if (normalize_ || timing_ != EvictionTiming::kDecode || (budget_needs_prompt() && prompt < 1))
    return std::nullopt;
  return counts(prompt).recent;
}

at::Tensor H2oPolicy::select(const RetentionInput& in) const {
  KVB_CHECK(in.accumulated.defined(), "h2o: the cache gave no accumulated attention");
  const Counts c = counts(in.prompt);
  const at::Tensor& pos = in.positions;  // [kv_heads, held]
  at::Tensor recent = pos.ge(in.length - c.recent);
  at::Tensor scores = in.accumulated.to(at::kDouble);
  if (normalize_)
    scores = scores / (in.length - pos).to(at::kDouble);  // queries that saw each token
  // Heavy hitters come from outside the recent window, which is kept whole.
  scores = scores.masked_fill(recent, -std::numeric_limits<double>::infinity());
  at::Tensor heavy = top_tokens(scores, c.heavy);
  const at::Tensor window = newest_indices(in, in.length - c.recent);
  return std::get<0>(at::cat({heavy, window}, 1).sort(1)).contiguous();
}

std::vector<at::Tensor> H2oPolicy::select_batch(
    const std::vector<const RetentionInput*>& inputs) const {
  // Counts from the prompt batch only when every input has the same (prompts of one length).
  if (inputs.empty()) return {};
  const Counts c = counts(inputs[0]->prompt);
  for (const RetentionInput* in : inputs) {
    const Counts mine = counts(in->prompt);
    if (mine.heavy != c.heavy || mine.recent != c.recent)
      return RetentionPolicy::select_batch(inputs);
  }
  const std::optional<NewestBatch> b = newest_batch(inputs, c.recent, &RetentionInput::accumulated);
  if (!b) return RetentionPolicy::select_batch(inputs);
  // select()'s operators over [inputs, kv_heads, held].
  at::Tensor scores = b->scores.to(at::kDouble);
  if (normalize_) scores = scores / (b->lengths - b->positions).to(at::kDouble);
  return top_and_newest(*b,
                        scores.masked_fill(b->positions.ge(b->lengths - c.recent),
                                           -std::numeric_limits<double>::infinity()),
                        c.heavy);
}

}  // namespace kvbench
