// The passkey retrieval task (Mohtashami & Jaggi 2023, as the seed paper and RULER use it):
// an instruction, repeated filler, the line "The pass key is K. Remember it. K is the pass
// key." at a chosen depth, more filler, then the question. Lengths are measured in the model's
// own tokens, so "4k tokens" means 4k tokens for that tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvbench/model/tokenizer.h"
#include "kvbench/workloads/task_sample.h"

namespace kvbench {

struct PasskeyOptions {
  int64_t target_tokens = 4096;  // the prompt is as long as possible without exceeding this
  double depth = 0.5;            // needle position in [0, 1] of the filler
  uint64_t seed = 0;             // chooses the 5-digit key
};

// Throws Error when even the prompt without filler exceeds target_tokens.
TaskSample make_passkey(const Tokenizer& tokenizer, const PasskeyOptions& options);
// 1 when the first integer in the output equals the key, else 0.
double passkey_score(const std::string& output, const std::string& key);

}  // namespace kvbench
