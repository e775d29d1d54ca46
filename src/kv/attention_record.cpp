#include "kvbench/kv/attention_record.h"

#include <map>
#include <vector>

#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"

namespace kvbench {
namespace {

// The records' states as one [records, ...] tensor: a view when they lie one after another in
// one buffer, as the last step's unbind left them (H2O's steady state, every step), else a
// stack. Read only: nothing writes through the view.
at::Tensor stacked(const std::vector<at::Tensor>& parts) {
  const at::Tensor& a = parts[0];
  bool packed = a.is_contiguous();
  for (size_t i = 1; packed && i < parts.size(); ++i) {
    const at::Tensor& p = parts[i];
    packed = p.sizes() == a.sizes() && p.is_contiguous() && p.dtype() == a.dtype() &&
             p.device() == a.device() && p.storage().is_alias_of(a.storage()) &&
             p.storage_offset() == a.storage_offset() + int64_t(i) * a.numel();
  }
  if (!packed) return at::stack(parts);
  std::vector<int64_t> sizes = {int64_t(parts.size())}, strides = {a.numel()};
  for (int64_t d = 0; d < a.dim(); ++d) sizes.push_back(a.size(d)), strides.push_back(a.stride(d));
  return a.as_strided(sizes, strides, a.storage_offset());
}

}  // namespace

bool selects_by_attention(const RetentionPolicy* policy) {
  if (policy == nullptr) return false;
  const RetentionNeeds needs = policy->needs();
  return needs == RetentionNeeds::kScoresEveryStep || needs == RetentionNeeds::kLastQueryScores ||
         needs == RetentionNeeds::kLowAttentionCounts;
}

uint64_t record_bytes_per_token(const RetentionPolicy& policy, int64_t group) {
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      return sizeof(float);
    case RetentionNeeds::kLowAttentionCounts:
      return sizeof(bool) * uint64_t(group) * uint64_t(policy.observation_window());
    default:
      return 0;
  }
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
                                at::Tensor& newest, SummedFn summed) {
  const int64_t held = keys.size(1);
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      add_summed((summed ? summed : &summed_attention)(qb, keys, positions, start));
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

bool AttentionRecord::covers(const RetentionPolicy& policy, const at::Tensor& newest,
                             int64_t held) const {
  const at::Tensor* state = nullptr;
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      state = &summed_;
      break;
    case RetentionNeeds::kLastQueryScores:
      state = &newest;
      break;
    case RetentionNeeds::kLowAttentionCounts:
      state = &low_;
      break;
    default:
      return false;
  }
  return state->defined() && state->dim() >= 2 && state->size(1) == held;
}

bool AttentionRecord::steady_ready(const RetentionPolicy& policy, int64_t held) const {
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep:
      return summed_.defined() && summed_.dim() == 2 && summed_.size(1) == held - 1;
    case RetentionNeeds::kLastQueryScores:
      return true;
    case RetentionNeeds::kLowAttentionCounts:
      return low_.defined() && low_.dim() == 4 && low_.size(1) == held - 1 &&
             low_.size(3) == policy.observation_window();
    default:
      return false;
  }
}

at::Tensor AttentionRecord::steady_states(const RetentionPolicy& policy,
                                          const std::vector<AttentionRecord*>& records) {
  const RetentionNeeds needs = policy.needs();
  if (needs == RetentionNeeds::kLastQueryScores || records.empty()) return {};
  std::vector<at::Tensor> parts;
  for (const AttentionRecord* r : records)
    parts.push_back(needs == RetentionNeeds::kScoresEveryStep ? r->summed_ : r->low_);
  return stacked(parts).contiguous();
}

void AttentionRecord::set_steady_states(const RetentionPolicy& policy,
                                        const std::vector<AttentionRecord*>& records,
                                        const at::Tensor& states) {
  const RetentionNeeds needs = policy.needs();
  if (needs == RetentionNeeds::kLastQueryScores) return;
  KVB_CHECK(states.defined() && states.size(0) == int64_t(records.size()),
            "attention record: steady states for ", records.size(), " records");
  const std::vector<at::Tensor> rows = states.unbind(0);
  for (size_t i = 0; i < records.size(); ++i)
    (needs == RetentionNeeds::kScoresEveryStep ? records[i]->summed_ : records[i]->low_) = rows[i];
}

at::Tensor AttentionRecord::drop_lowest_batch(const RetentionPolicy& policy,
                                              const std::vector<AttentionRecord*>& records,
                                              const std::vector<at::Tensor>& newest,
                                              int64_t candidates) {
  KVB_CHECK(!records.empty() && selects_by_attention(&policy),
            "attention record: no records to drop from, or a policy that does not select by "
            "attention");
  const RetentionNeeds needs = policy.needs();
  KVB_CHECK(needs != RetentionNeeds::kLastQueryScores || newest.size() == records.size(),
            "attention record: ", newest.size(), " newest-query scores for ", records.size(),
            " records");
  std::vector<at::Tensor> parts;
  for (size_t i = 0; i < records.size(); ++i) {
    const AttentionRecord* r = records[i];
    const at::Tensor& state = needs == RetentionNeeds::kScoresEveryStep      ? r->summed_
                              : needs == RetentionNeeds::kLowAttentionCounts ? r->low_
                                                                             : newest[i];
    KVB_CHECK(state.defined() && (parts.empty() || state.sizes() == parts[0].sizes()) &&
                  candidates >= 1 && candidates <= state.size(1),
              "attention record: dropping the lowest of ", candidates,
              " needs states of one shape covering them");
    parts.push_back(state);
  }
  // fill()'s input for the policy, over the stacked states: [records, kv_heads, held].
  const at::Tensor states = stacked(parts);
  const at::Tensor input =
      needs == RetentionNeeds::kLowAttentionCounts ? states.sum(4).to(at::kFloat).mean(3) : states;
  const at::Tensor scores = policy.steady_scores(input);
  const int64_t E = scores.size(0), held = scores.size(2);
  // A NaN score counts as +inf: above every finite score, as in top_tokens' sort (and the
  // steady kernel).
  at::Tensor first = scores.narrow(2, 0, candidates);
  first = first.masked_fill(first.isnan(), INFINITY);
  const at::TensorOptions index = scores.options().dtype(at::kLong);
  // The last index holding the lowest score: equal scores keep their token order in
  // top_tokens' stable sort, so the later one falls out (of none but NaNs, the last).
  const at::Tensor dropped =
      first.eq(first.amin(2, /*keepdim=*/true)).mul(at::arange(candidates, index)).amax(2);
  at::Tensor keep = at::arange(held - 1, index).view({1, 1, held - 1});
  keep = keep.add(keep.ge(dropped.unsqueeze(2)));  // [records, kv_heads, held - 1]
  if (needs == RetentionNeeds::kScoresEveryStep) {
    const std::vector<at::Tensor> kept = states.gather(2, keep).unbind(0);
    for (size_t i = 0; i < records.size(); ++i) records[i]->summed_ = kept[i];
  } else if (needs == RetentionNeeds::kLowAttentionCounts) {
    // The ring: [records, kv_heads, held, group, window].
    const at::Tensor rows = keep.view({E, keep.size(1), held - 1, 1, 1})
                                .expand({-1, -1, -1, states.size(3), states.size(4)});
    const std::vector<at::Tensor> kept = states.gather(2, rows).unbind(0);
    for (size_t i = 0; i < records.size(); ++i) records[i]->low_ = kept[i];
  }
  return dropped;
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

namespace {

// The indices of `keys` grouped by equal key, each group in order, groups in order of their
// first member.
std::vector<std::vector<size_t>> groups_of(const std::vector<std::vector<int64_t>>& keys) {
  std::map<std::vector<int64_t>, size_t> group;
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto [it, fresh] = group.emplace(keys[i], out.size());
    if (fresh) out.emplace_back();
    out[it->second].push_back(i);
  }
  return out;
}

// A key part for a state: its shape, dtype and device, or -1 when it does not exist yet
// (records of one key stack).
void append_shape(std::vector<int64_t>& key, const at::Tensor& state) {
  if (!state.defined()) return key.push_back(-1);
  key.push_back(state.dim());
  for (const int64_t n : state.sizes()) key.push_back(n);
  key.push_back(int64_t(state.scalar_type()));
  key.push_back(int64_t(state.device().type()));
  key.push_back(int64_t(state.device().index()));
}

// Host values as a tensor on `device`: from pinned memory on a GPU, so the copy is queued
// behind the device's work instead of waiting for it.
at::Tensor on_device(const std::vector<int64_t>& values, const at::Device& device) {
  const at::Tensor host = at::tensor(values, at::kLong);
  if (!device.is_cuda()) return host.to(device);
  return host.pin_memory().to(device, /*non_blocking=*/true);
}

}  // namespace

void AttentionRecord::add_scores_batch(const RetentionPolicy& policy,
                                       const std::vector<AttentionRecord*>& records,
                                       const at::Tensor& logits, const std::vector<int64_t>& held,
                                       int64_t kv_heads, const std::vector<int64_t>& starts,
                                       std::vector<at::Tensor>& newest) {
  KVB_CHECK(held.size() == records.size() && starts.size() == records.size() &&
                newest.size() == records.size() && logits.dim() == 3 &&
                logits.size(0) == int64_t(records.size()),
            "attention record: ", records.size(), " records for scores of shape ", logits.sizes());
  std::vector<std::vector<int64_t>> keys(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i] == nullptr) continue;
    for (const at::Tensor* state : {&records[i]->summed_, &records[i]->low_})
      KVB_CHECK(!state->defined() || state->size(1) <= held[i],
                "attention record: ", state->size(1), " tokens recorded, the step's scores cover ",
                held[i]);
    keys[i] = {held[i]};
    append_shape(keys[i], records[i]->summed_);
    append_shape(keys[i], records[i]->low_);
  }
  for (const std::vector<size_t>& group : groups_of(keys)) {
    const size_t first = group[0];
    if (records[first] == nullptr) continue;
    if (group.size() == 1) {
      records[first]->add_scores(policy, logits[int64_t(first)].narrow(1, 0, held[first]), kv_heads,
                                 starts[first], newest[first]);
      continue;
    }
    add_group_scores(policy, records, group, logits, held[first], kv_heads, starts, newest);
  }
}

void AttentionRecord::add_group_scores(const RetentionPolicy& policy,
                                       const std::vector<AttentionRecord*>& records,
                                       const std::vector<size_t>& group, const at::Tensor& logits,
                                       int64_t held, int64_t kv_heads,
                                       const std::vector<int64_t>& starts,
                                       std::vector<at::Tensor>& newest) {
  const int64_t G = int64_t(group.size()), heads = logits.size(1), g = heads / kv_heads;
  at::Tensor rows = logits;  // [G, heads, held]
  if (G != logits.size(0) || held != logits.size(2)) {
    std::vector<at::Tensor> parts;
    for (const size_t i : group) parts.push_back(logits[int64_t(i)].narrow(1, 0, held));
    rows = at::stack(parts);
  }
  // add_scores' formulas with the group's records as the leading dimension.
  const at::Tensor p = at::softmax(rows, -1, at::kFloat).view({G, kv_heads, g, held});
  auto states = [&](at::Tensor AttentionRecord::*state) {
    std::vector<at::Tensor> parts;
    for (const size_t i : group) parts.push_back(records[i]->*state);
    return stacked(parts);
  };
  switch (policy.needs()) {
    case RetentionNeeds::kScoresEveryStep: {
      at::Tensor summed = p.sum(2).div_(double(g));  // [G, kv_heads, held]
      const at::Tensor& before = records[group[0]]->summed_;
      if (before.defined())
        summed =
            at::constant_pad_nd(states(&AttentionRecord::summed_), {0, held - before.size(1)}) +
            summed;
      const std::vector<at::Tensor> rows = summed.unbind(0);
      for (size_t j = 0; j < group.size(); ++j) records[group[j]]->summed_ = rows[j];
      break;
    }
    case RetentionNeeds::kLastQueryScores: {
      const std::vector<at::Tensor> means = p.mean(2).unbind(0);
      for (size_t j = 0; j < group.size(); ++j) newest[group[j]] = means[j];
      break;
    }
    case RetentionNeeds::kLowAttentionCounts: {
      const int64_t window = policy.observation_window();
      const at::Tensor low = p.lt(1.0 / double(held)).permute({0, 1, 3, 2});  // [G, kvh, held, g]
      const at::Tensor& before = records[group[0]]->low_;
      at::Tensor ring = before.defined()
                            ? at::constant_pad_nd(states(&AttentionRecord::low_),
                                                  {0, 0, 0, 0, 0, held - before.size(1)})
                            : at::zeros({G, kv_heads, held, g, window}, low.options());
      // Each record's column: its query's position modulo the window.
      std::vector<int64_t> columns;
      for (const size_t i : group) columns.push_back(starts[i] % window);
      const at::Tensor column = on_device(columns, low.device()).view({G, 1, 1, 1, 1});
      ring.scatter_(4, column.expand({G, kv_heads, held, g, 1}), low.unsqueeze(4));
      const std::vector<at::Tensor> rings = ring.unbind(0);
      for (size_t j = 0; j < group.size(); ++j) records[group[j]]->low_ = rings[j];
      break;
    }
    default:
      break;
  }
}

void AttentionRecord::fill_batch(const RetentionPolicy& policy,
                                 const std::vector<const AttentionRecord*>& records,
                                 const std::vector<at::Tensor>& newest,
                                 const std::vector<RetentionInput*>& inputs) {
  KVB_CHECK(newest.size() == records.size() && inputs.size() == records.size(),
            "attention record: ", records.size(), " records for ", inputs.size(), " inputs");
  // Only ScissorHands' counts are computed here; the other states are handed over as they are.
  std::vector<std::vector<int64_t>> keys(records.size());
  const bool counts = policy.needs() == RetentionNeeds::kLowAttentionCounts;
  for (size_t i = 0; i < records.size(); ++i)
    if (counts && records[i]) append_shape(keys[i], records[i]->low_);
  for (const std::vector<size_t>& group : groups_of(keys)) {
    if (group.size() == 1 || !counts || records[group[0]] == nullptr ||
        !records[group[0]]->low_.defined()) {
      for (const size_t i : group)
        if (records[i]) records[i]->fill(policy, newest[i], *inputs[i]);
      continue;
    }
    std::vector<at::Tensor> lows;
    for (const size_t i : group) lows.push_back(records[i]->low_);
    // fill's formula over the stacked states.
    const std::vector<at::Tensor> c = at::stack(lows).sum(4).to(at::kFloat).mean(3).unbind(0);
    for (size_t j = 0; j < group.size(); ++j) inputs[group[j]]->low_counts = c[j];
  }
}

void AttentionRecord::keep_batch(const std::vector<AttentionRecord*>& records,
                                 const std::vector<at::Tensor>& wheres) {
  KVB_CHECK(wheres.size() == records.size(), "attention record: ", records.size(), " records for ",
            wheres.size(), " selections");
  std::vector<std::vector<int64_t>> keys(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i] == nullptr) continue;
    append_shape(keys[i], records[i]->summed_);
    append_shape(keys[i], records[i]->low_);
    append_shape(keys[i], wheres[i]);
    keys[i].push_back(int64_t(wheres[i].device().type()));
  }
  for (const std::vector<size_t>& group : groups_of(keys)) {
    AttentionRecord* first = records[group[0]];
    if (first == nullptr) continue;
    if (group.size() == 1 || (!first->summed_.defined() && !first->low_.defined())) {
      for (const size_t i : group) records[i]->keep(wheres[i]);
      continue;
    }
    const at::Device device =
        first->summed_.defined() ? first->summed_.device() : first->low_.device();
    std::vector<at::Tensor> parts;
    for (const size_t i : group) parts.push_back(wheres[i]);
    const at::Tensor index = at::stack(parts).to(device, at::kLong);  // [G, kv_heads, kept]
    const int64_t G = index.size(0);
    if (first->summed_.defined()) {
      parts.clear();
      for (const size_t i : group) parts.push_back(records[i]->summed_);
      const std::vector<at::Tensor> kept = at::stack(parts).gather(2, index).unbind(0);
      for (size_t j = 0; j < group.size(); ++j) records[group[j]]->summed_ = kept[j];
    }
    if (first->low_.defined()) {
      parts.clear();
      for (const size_t i : group) parts.push_back(records[i]->low_);
      const at::Tensor low = at::stack(parts);  // [G, kv_heads, held, group, window]
      const at::Tensor rows =
          index.view({G, index.size(1), -1, 1, 1}).expand({-1, -1, -1, low.size(3), low.size(4)});
      const std::vector<at::Tensor> kept = low.gather(2, rows).unbind(0);
      for (size_t j = 0; j < group.size(); ++j) records[group[j]]->low_ = kept[j];
    }
  }
}

std::vector<RetentionChoice> choose_retained(const RetentionPolicy& policy,
                                             const std::vector<RetentionInput*>& inputs,
                                             double* waited_s, bool read_back) {
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
    const bool cpu = c.device().is_cpu();
    chosen.push_back({c, cpu || read_back ? c : at::Tensor()});
    if (!cpu) on_device.push_back(c.reshape({-1}));
  }
  if (on_device.empty() || !read_back) return chosen;
  const at::Tensor all = at::cat(on_device);
  if (waited_s != nullptr) *waited_s += wait_for_device(all.device());
  const at::Tensor host = all.to(at::kCPU);  // the one wait
  int64_t offset = 0;
  for (RetentionChoice& c : chosen) {
    if (c.where.device().is_cpu()) continue;
    c.host = host.narrow(0, offset, c.where.numel()).view(c.where.sizes());
    offset += c.where.numel();
  }
  return chosen;
}

}  // namespace kvbench
