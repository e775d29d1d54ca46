// RULER's common-words extraction (scripts/data/synthetic/common_words_extraction.py in
// NVIDIA/RULER): a numbered, shuffled word list in which num_common words appear common_freq
// times and every other word uncommon_freq times; the question asks for the common ones. The
// filler is the number of uncommon words.
#include <unordered_set>

#include "kvbench/core/error.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/scorers.h"
#include "kvbench/workloads/word_lists.h"
#include "ruler_util.h"

namespace kvbench {

using namespace workloads_detail;

TaskSample make_common_words(const Tokenizer& tokenizer, const CommonWordsOptions& o) {
  const std::string task = "common_words";
  KVB_CHECK(o.num_common >= 1 && o.uncommon_freq >= 1, task,
            ": num_common and uncommon_freq must be >= 1, got ", o.num_common, " and ",
            o.uncommon_freq);
  KVB_CHECK(o.common_freq > o.uncommon_freq, task, ": common_freq (", o.common_freq,
            ") must exceed uncommon_freq (", o.uncommon_freq, ")");

  // Single words first (seeded order), then "adjective-noun" pairs once those run out, so
  // long prompts still have distinct words.
  std::vector<std::string> words = adjective_words();
  words.insert(words.end(), noun_words().begin(), noun_words().end());
  KVB_CHECK(o.num_common < static_cast<int64_t>(words.size()), task, ": num_common must be < ",
            words.size(), ", got ", o.num_common);
  Rng pick = substream(o.seed, 0);
  shuffle(words, pick);
  const std::string count = std::to_string(o.num_common);
  const std::string header =
      "Below is a numbered list of words. In these words, some appear more often than others. "
      "Memorize the ones that appear most often.\n";
  const std::string question = "\nQuestion: What are the " + count +
                               " most common words in the above list? Answer: The top " + count +
                               " words that appear most often in the list are:";
  std::unordered_set<std::string> used(words.begin(), words.end());
  // Scoring finds each answer as a substring of the output, and the invariant is that each
  // common word occurs common_freq times in the text: no other entry may contain a common word
  // or sit inside one ("car" in "carpet", in "bold-car"; "old" in "gold"), so such words are
  // passed over; nor may a common word be in the header or the question ("common").
  std::vector<std::string> common, uncommon;
  const std::string fixed_text = header + question;
  const auto overlaps = [&](const std::string& w) {
    for (const std::string& c : common)
      if (w.find(c) != std::string::npos || c.find(w) != std::string::npos) return true;
    return false;
  };
  for (const std::string& w : words)
    if (static_cast<int64_t>(common.size()) < o.num_common && !overlaps(w) &&
        fixed_text.find(w) == std::string::npos)
      common.push_back(w);
  for (const std::string& w : words)
    if (!overlaps(w)) uncommon.push_back(w);
  KVB_CHECK(static_cast<int64_t>(common.size()) == o.num_common, task, ": num_common ",
            o.num_common, " is more than the word lists hold apart from each other");
  Rng pairs = substream(o.seed, 1);
  auto uncommon_word = [&](int64_t i) -> const std::string& {
    while (static_cast<int64_t>(uncommon.size()) <= i) {
      uncommon.push_back(draw_unique(used, [&] {
        for (int tries = 0;; ++tries) {
          KVB_CHECK(tries < 100000, task, ": num_common ", o.num_common,
                    " leaves too few word pairs apart from the common words for the filler");
          std::string p = random_word_pair(pairs);
          if (!overlaps(p)) return p;
        }
      }));
    }
    return uncommon[i];
  };

  auto build = [&](int64_t n) {
    if (n > 0) uncommon_word(n - 1);  // grow the list first: `list` points into it
    std::vector<const std::string*> list;
    for (const auto& w : common) list.insert(list.end(), o.common_freq, &w);
    for (int64_t i = 0; i < n; ++i) list.insert(list.end(), o.uncommon_freq, &uncommon[i]);
    Rng order = substream(o.seed, 2);
    shuffle(list, order);
    std::string context;
    for (size_t i = 0; i < list.size(); ++i) {
      context += (i ? " " : "") + std::to_string(i + 1) + ". " + *list[i];
    }
    return header + context + question;
  };
  const int64_t n = fit_filler([&](int64_t m) { return count_tokens(tokenizer, build(m)); },
                               o.target_tokens, task);

  TaskSample s;
  s.prompt = build(n);
  s.prompt_tokens = count_tokens(tokenizer, s.prompt);
  s.answers = common;
  s.needle_depth = 0;
  s.id = sample_id(task, o.seed, o.target_tokens);
  return s;
}

double common_words_score(const std::string& output, const std::vector<std::string>& answers) {
  return string_match_all(output, answers);
}

}  // namespace kvbench
