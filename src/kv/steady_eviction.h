// The steady state of a policy dropping its lowest score (H2O, TOVA, ScissorHands) where the
// pools are: what PagedKVCache and PaluPagedCache share around kernels/steady_evict.h. Each
// cache decides which sequences are served and keeps its own lists; this joins their lists
// and runs the kernel over their records.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "kvbench/kv/attention_record.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/kv/retention_policy.h"

namespace kvbench {

// Lists of `per` int32 each, where the pools are, as one tensor: a view when they lie one
// after another in one buffer (as the kernel leaves them, and as a step's selections are
// uploaded), else joined.
at::Tensor join_lists(const std::vector<UploadedList>& lists, int64_t per);

// One launch for the served sequences of a layer.
struct SteadyEviction {
  const RetentionPolicy* policy = nullptr;
  std::vector<AttentionRecord*> records;  // one per served sequence
  at::Tensor logits;                      // [rows, q_heads, stride] fp32 scaled scores
  const int* steps = nullptr;  // [2 * records] int32 rows and ring offsets, on logits' device
  at::Tensor tails;            // [rows] int32 tail starts, as the step's attention read them
  at::Tensor lists;            // [records * kv_heads * count] int32 (join_lists); none if count 0
  int64_t kv_heads = 0, held = 0, count = 0;
  float* workspace = nullptr;  // records * kv_heads * (held + 1) floats on logits' device
};

// Adds the step's scores to the records, drops each head's lowest (kernels/steady_evict.h,
// the host reference off a GPU) and sets the records' new states; returns the lists without
// the dropped tokens, each followed by its tail's first (undefined when count is 0).
at::Tensor evict_steady_records(const SteadyEviction& e);

}  // namespace kvbench
