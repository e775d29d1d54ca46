// One generated prompt of a synthetic long-context task (passkey, RULER needles, variable
// tracking, common words, key-value retrieval) with its references, as the accuracy and
// output-length suites consume it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvbench {

struct TaskSample {
  std::string id;                    // "<task>-<seed>-<target tokens>-<depth>"
  std::string prompt;                // text, before any chat template
  std::vector<std::string> answers;  // reference answers
  int64_t prompt_tokens = 0;         // encode(prompt, add_special_tokens) length
  double needle_depth = 0;           // where the (first answer) needle landed, as a fraction of
                                     // the filler; 0 for tasks without a needle (common words)
};

}  // namespace kvbench
