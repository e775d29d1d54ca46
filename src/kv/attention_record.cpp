#include "kvbench/kv/attention_record.h"

#include <vector>

#include "kvbench/core/error.h"

namespace kvbench {

bool selects_by_attention(const RetentionPolicy* policy) {
  if (policy == nullptr) return false;
  const RetentionNeeds needs = policy->needs();
  return needs == RetentionNeeds::kScoresEveryStep || needs == RetentionNeeds::kLastQueryScores ||
         needs == RetentionNeeds::kLowAttentionCounts;
}

at::Tensor AttentionRecord::grown(const at::Tensor& state, std::vector<int64_t> shape,
                                  const at::TensorOptions& options) {
  const int64_t before = state.defined() ? state.size(1) : 0;
  if (before == shape[1]) return state;
  shape[1] -= before;
  const at::Tensor fresh = at::zeros(shape, options);
  return state.defined() ? at::cat({state, fresh}, 1) : fresh;
}

void AttentionRecord::add_summed(const at::Tensor& summed) {
  // Out of place: a state a policy was handed (fill) stays as it was.
  summed_ = grown(summed_, summed.sizes().vec(), summed.options()) + summed;
}

void AttentionRecord::add_block(const RetentionPolicy& policy, const at::Tensor& qb,
                                const at::Tensor& keys, const at::Tensor& positions, int64_t start,
                                at::Tensor& newest) {
  const int64_t held = keys.size(1);
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      add_summed(summed_attention(qb, keys, positions, start));
      break;
    case RetentionNeeds::kLastQueryScores:
      newest = newest_query_attention(qb, keys);
      break;
    case RetentionNeeds::kLowAttentionCounts: {
      const int64_t window = policy.observation_window(), n = qb.size(1);
      const at::Tensor low = low_attention(qb, keys, positions, start, window);  // [kvh,held,g,m]
      const int64_t m = low.size(3);
      low_ = grown(low_, {low.size(0), held, low.size(2), window}, low.options());
      // The ring's columns: query position modulo the window.
      const at::Tensor columns =
          at::arange(start + n - m, start + n, low.options().dtype(at::kLong)).remainder_(window);
      low_.index_copy_(3, columns, low);
      break;
    }
    default:
      break;
  }
}

void AttentionRecord::add_scores(const RetentionPolicy& policy, const at::Tensor& scores,
                                 int64_t kv_heads, int64_t start, at::Tensor& newest) {
  const int64_t heads = scores.size(0), held = scores.size(1), group = heads / kv_heads;
  // The reference's formulas with nothing masked (the query sees every held token).
  const at::Tensor p = at::softmax(scores, -1, at::kFloat).view({kv_heads, group, held});
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      add_summed(p.sum(1).div_(double(group)));
      break;
    case RetentionNeeds::kLastQueryScores:
      newest = p.mean(1);
      break;
    case RetentionNeeds::kLowAttentionCounts: {
      const int64_t window = policy.observation_window();
      const at::Tensor low = p.lt(1.0 / double(held)).permute({0, 2, 1}).unsqueeze(3);
      low_ = grown(low_, {kv_heads, held, group, window}, low.options());
      low_.select(3, start % window).copy_(low.squeeze(3));
      break;
    }
    default:
      break;
  }
}

void AttentionRecord::fill(const RetentionPolicy& policy, const at::Tensor& newest,
                           RetentionInput& in) const {
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      in.accumulated = summed_;
      break;
    case RetentionNeeds::kLastQueryScores:
      in.current = newest;
      break;
    case RetentionNeeds::kLowAttentionCounts:
      in.low_counts = low_.sum(3).to(at::kFloat).mean(2);
      break;
    default:
      break;
  }
}

void AttentionRecord::keep(const at::Tensor& where) {
  if (!summed_.defined() && !low_.defined()) return;
  const at::Device device = summed_.defined() ? summed_.device() : low_.device();
  const at::Tensor index = where.device() == device && where.scalar_type() == at::kLong
                               ? where
                               : where.to(device, at::kLong);
  if (summed_.defined()) summed_ = summed_.gather(1, index);
  if (low_.defined()) {
    const at::Tensor rows =
        index.view({low_.size(0), -1, 1, 1}).expand({-1, -1, low_.size(2), low_.size(3)});
    low_ = low_.gather(1, rows);
  }
}

std::vector<RetentionChoice> choose_retained(const RetentionPolicy& policy,
                                             const std::vector<RetentionInput*>& inputs) {
  // The positions stay on the host beside each input (the policy counts there; select_batch
  // moves them where the scores are).
  std::vector<RetentionInput> where(inputs.size());
  std::vector<const RetentionInput*> batch;
  for (size_t i = 0; i < inputs.size(); ++i) {
    where[i] = *inputs[i];
    where[i].host_positions = inputs[i]->positions;
    batch.push_back(&where[i]);
  }
  const std::vector<at::Tensor> picks = policy.select_batch(batch);
  KVB_CHECK(picks.size() == inputs.size(), "retention policy '", policy.name(), "' chose for ",
            picks.size(), " of ", inputs.size(), " inputs");
  std::vector<RetentionChoice> chosen;
  std::vector<at::Tensor> on_device;  // flattened, in order
  for (const at::Tensor& c : picks) {
    chosen.push_back({c, c});
    if (!c.device().is_cpu()) on_device.push_back(c.reshape({-1}));
  }
  if (on_device.empty()) return chosen;
  const at::Tensor host = at::cat(on_device).to(at::kCPU);  // the one wait
  int64_t offset = 0;
  for (RetentionChoice& c : chosen) {
    if (c.where.device().is_cpu()) continue;
    c.host = host.narrow(0, offset, c.where.numel()).view(c.where.sizes());
    offset += c.where.numel();
  }
  return chosen;
}

}  // namespace kvbench
