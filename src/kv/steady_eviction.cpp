#include "steady_eviction.h"

#include <cstdint>

#include "kvbench/core/error.h"
#include "paged_cache_cuda.h"

namespace kvbench {

at::Tensor join_lists(const std::vector<UploadedList>& lists, int64_t per) {
  KVB_CHECK(!lists.empty(), "steady eviction: no lists to join");
  const UploadedList& first = lists[0];
  bool packed = true;
  for (size_t j = 1; packed && j < lists.size(); ++j)
    packed =
        lists[j].buffer.is_same(first.buffer) && lists[j].offset == first.offset + int64_t(j) * per;
  if (packed) return first.buffer.view({-1}).narrow(0, first.offset, int64_t(lists.size()) * per);
  std::vector<at::Tensor> parts;
  for (const UploadedList& d : lists) parts.push_back(d.buffer.view({-1}).narrow(0, d.offset, per));
  return at::cat(parts);
}

at::Tensor evict_steady_records(const SteadyEviction& e) {
  const RetentionPolicy& policy = *e.policy;
  const int64_t E = int64_t(e.records.size()), H = e.kv_heads;
  KVB_CHECK(e.tails.defined() && e.tails.scalar_type() == at::kInt &&
                e.tails.device() == e.logits.device(),
            "steady eviction: the step's int32 tails must lie beside its logits");
  kernels::SteadyEvictProblem p;
  p.rule = steady_rule(policy);
  if (p.rule == kernels::SteadyRule::kLowCounts) p.window = int(policy.observation_window());
  p.records = int(E), p.kv_heads = int(H), p.group = int(e.logits.size(1) / H);
  p.held = int(e.held), p.count = int(e.count);
  p.logits = e.logits.data_ptr<float>();
  p.logit_stride = e.logits.size(2), p.logit_row = e.logits.size(1) * e.logits.size(2);
  p.steps = e.steps, p.tails = e.tails.data_ptr<int>();
  at::Tensor lists_out;
  if (e.count > 0) {
    lists_out = at::empty({E * H * e.count}, e.lists.options());
    p.lists = e.lists.data_ptr<int>(), p.lists_out = lists_out.data_ptr<int>();
  }
  const at::Tensor states = AttentionRecord::steady_states(policy, e.records);
  const at::Tensor states_out = states.defined() ? at::empty_like(states) : at::Tensor();
  if (p.rule == kernels::SteadyRule::kSummed)
    p.summed = states.data_ptr<float>(), p.summed_out = states_out.data_ptr<float>();
  if (p.rule == kernels::SteadyRule::kLowCounts)
    p.low = reinterpret_cast<const uint8_t*>(states.data_ptr<bool>()),
    p.low_out = reinterpret_cast<uint8_t*>(states_out.data_ptr<bool>());
  // Scores then dropped indices, both floats' size.
  p.scores = e.workspace;
  p.dropped = reinterpret_cast<int*>(p.scores + E * H * e.held);
  paged_cuda::steady_evict(p, e.logits);
  AttentionRecord::set_steady_states(policy, e.records, states_out);
  return lists_out;
}

}  // namespace kvbench
