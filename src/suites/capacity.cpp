#include "kvbench/suites/capacity.h"

#include <algorithm>
#include <cmath>

#include "kvbench/core/error.h"
#include "kvbench/kv/quest_policy.h"

namespace kvbench {

SequenceKvBytes sequence_kv_bytes(const Codec& codec, const RetentionPolicy& policy,
                                  const ModelConfig& c, int64_t prompt, int64_t context) {
  KVB_CHECK(prompt >= 1 && context >= prompt, "capacity: context (", context,
            ") must be >= the prompt (", prompt, ") >= 1");
  const auto* quest = dynamic_cast<const QuestPolicy*>(&policy);
  SequenceKvBytes out;
  out.shared = codec.shared_nominal().total();
  RetentionInput in;
  in.num_layers = c.num_layers;
  in.prompt = prompt;
  auto held_at = [&](int64_t layer, int64_t t) {
    in.layer = layer;
    if (policy.timing() == EvictionTiming::kDecode) {
      in.length = t;
      return std::min(t, policy.budget(in));
    }
    in.length = prompt;
    const int64_t budget = policy.budget(in);
    return budget >= prompt ? t : budget + (t - prompt);
  };
  // Bytes are not monotone in the tokens (KIVI's window folds into quantized groups), so the
  // sequence's size is the largest over its states, from the prefill to `context` tokens.
  for (int64_t t = prompt; t <= context; ++t) {
    uint64_t bytes = 0;
    std::vector<int64_t> held;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      held.push_back(held_at(l, t));
      bytes += codec.nominal_bytes(held.back(), c.num_kv_heads, c.head_dim).total();
      if (quest && l >= quest->dense_layers()) {
        bytes +=
            QuestPages::nominal_bytes(held.back(), c.num_kv_heads, c.head_dim, quest->page_size());
      }
    }
    out.per_sequence = std::max(out.per_sequence, bytes);
    if (t == context) out.held_per_layer = held;
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    out.prefill += codec.nominal_bytes(prompt, c.num_kv_heads, c.head_dim).total();
    if (quest && l >= quest->dense_layers())
      out.prefill +=
          QuestPages::nominal_bytes(prompt, c.num_kv_heads, c.head_dim, quest->page_size());
  }
  return out;
}

uint64_t SequenceKvBytes::batch_bytes(int64_t batch) const {
  if (batch <= 0) return shared;
  return shared + static_cast<uint64_t>(batch - 1) * per_sequence + std::max(per_sequence, prefill);
}

int64_t largest_batch(double budget_bytes, const SequenceKvBytes& bytes) {
  KVB_CHECK(bytes.per_sequence > 0, "capacity: a sequence takes 0 KV bytes");
  const double left = budget_bytes - static_cast<double>(bytes.batch_bytes(1));
  if (left < 0) return 0;
  return 1 + static_cast<int64_t>(std::floor(left / static_cast<double>(bytes.per_sequence)));
}

}  // namespace kvbench
