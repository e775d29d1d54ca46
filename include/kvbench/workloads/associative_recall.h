// Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology"), written as text: a list
// of "key value" lines (3-letter keys, 4-digit values), then recall lines that repeat earlier
// keys with their values, then the asked key alone. Every recall line is a retrieval at its
// own distance, so one prompt carries dozens of retrievals; the asked key is never among the
// recall lines, so its value can only come from the list.
#pragma once

#include <cstdint>
#include <string>

#include "kvbench/model/tokenizer.h"
#include "kvbench/workloads/task_sample.h"

namespace kvbench {

struct AssociativeRecallOptions {
  int64_t target_tokens = 4096;  // the prompt is as long as possible without exceeding this
  double depth = 0.5;            // where the asked pair sits in the key list, in [0, 1]
  uint64_t seed = 0;             // chooses keys, values and the recall order
  double recall_fraction = 0.5;  // share of the lines that are recall lines, in [0, 0.5]
};

// Throws Error when even one pair and the question exceed target_tokens.
TaskSample make_associative_recall(const Tokenizer& tokenizer,
                                   const AssociativeRecallOptions& options);

}  // namespace kvbench
