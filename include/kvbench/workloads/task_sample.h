// One generated prompt of a synthetic long-context task (passkey, RULER needles, variable
// tracking, common words, key-value retrieval) with its references, as the accuracy and
// output-length suites consume it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvbench {

struct TaskSample {
  std::string id;      // "<task>-<seed>-<target tokens>[-<depth>]" (common_words: no depth)
  std::string prompt;  // text, before any chat template
  // The prompt's last words that open the answer (RULER's answer_prefix, "The pass key is"),
  // a suffix of `prompt`: a chat-wrapped prompt puts them after the assistant's header, so the
  // reply continues them, as RULER does. Empty for tasks without one (kv_retrieval's
  // "Corresponding value:" stays in the question, as Lost in the Middle asks it).
  std::string answer_prefix;
  std::vector<std::string> answers;  // reference answers
  int64_t prompt_tokens = 0;         // encode(prompt, add_special_tokens) length
  double needle_depth = 0;           // where the (first answer) needle landed, as a fraction of
                                     // the filler; 0 for tasks without a needle (common words)
};

}  // namespace kvbench
