// RULER's common-words extraction (scripts/data/synthetic/common_words_extraction.py in
// NVIDIA/RULER): a numbered, shuffled word list in which num_common words appear common_freq
// times and every other word uncommon_freq times; the question asks for the common ones. The
// filler is the number of uncommon words. Worked examples (RULER's one-shot) come first.
#include <cctype>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "kvbench/core/error.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/scorers.h"
#include "kvbench/workloads/word_lists.h"
#include "ruler_util.h"

namespace kvbench {

using namespace workloads_detail;

namespace {

// "1. a 2. b 3. c".
std::string numbered(const std::vector<const std::string*>& list) {
  std::string text;
  for (size_t i = 0; i < list.size(); ++i) {
    text += (i ? " " : "") + std::to_string(i + 1) + ". " + *list[i];
  }
  return text;
}

// RULER's worked examples: each a list of its own, num_common of its words listed more often,
// its question with the answer prefix, and the answer as a numbered list (RULER's template
// holds the prefix, and the example's answer follows it). Below 4096 target tokens RULER lists 20
// words, the asked ones 3 times and the others once, else 40 words at 10 and 3 times; kvbench
// keeps that list's other words (10 or 30) for any num_common. The words are taken from the
// front of `words` (the seeded words free of the asked ones) and leave it: no example shares a
// word with the sample's list or with another example.
std::string worked_examples(const CommonWordsOptions& o, const std::string& header,
                            const std::string& question, std::vector<std::string>& words) {
  const bool short_target = o.target_tokens < 4096;
  const int64_t others = short_target ? 10 : 30;
  const int64_t asked_freq = short_target ? 3 : 10, other_freq = short_target ? 1 : 3;
  const size_t per_example = static_cast<size_t>(o.num_common + others);
  const size_t taken = per_example * static_cast<size_t>(o.shots);
  KVB_CHECK(taken < words.size(), "common_words: ", o.shots, " examples of ", per_example,
            " words each need more than the ", words.size(), " words free of the asked ones");
  Rng order = substream(o.seed, 3);
  std::string text;
  for (size_t e = 0; e < static_cast<size_t>(o.shots); ++e) {
    const std::string* first = &words[e * per_example];
    std::vector<const std::string*> list, answer;
    for (size_t i = 0; i < per_example; ++i) {
      const bool asked = static_cast<int64_t>(i) < o.num_common;
      list.insert(list.end(), asked ? asked_freq : other_freq, first + i);
      if (asked) answer.push_back(first + i);
    }
    shuffle(list, order);
    text += header + numbered(list) + question + " " + numbered(answer) + "\n";
  }
  words.erase(words.begin(), words.begin() + static_cast<std::ptrdiff_t>(taken));
  return text;
}

}  // namespace

TaskSample make_common_words(const Tokenizer& tokenizer, const CommonWordsOptions& o) {
  const std::string task = "common_words";
  KVB_CHECK(o.num_common >= 1 && o.uncommon_freq >= 1, task,
            ": num_common and uncommon_freq must be >= 1, got ", o.num_common, " and ",
            o.uncommon_freq);
  KVB_CHECK(o.common_freq > o.uncommon_freq, task, ": common_freq (", o.common_freq,
            ") must exceed uncommon_freq (", o.uncommon_freq, ")");
  KVB_CHECK(o.shots >= 0 && o.shots <= kMaxCommonWordsShots, task, ": shots must be in [0, ",
            kMaxCommonWordsShots, "], got ", o.shots);

  // Single words first (seeded order), then "adjective-noun" pairs once those run out, so
  // longer prompts still have distinct entries.
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
  const std::string answer_prefix =
      " Answer: The top " + count + " words that appear most often in the list are:";
  const std::string question =
      "\nQuestion: What are the " + count + " most common words in the above list?" + answer_prefix;
  // Scoring finds each answer as a substring of the lower-cased output, and the invariant is
  // that each common word occurs common_freq times in the text: no other entry may contain a
  // common word or sit inside one ("car" in "carpet", in "bold-car"; "old" in "gold"), so such
  // words are passed over; nor may a common word be in the header or the question, in any case
  // ("common"; "answer", which the question spells "Answer").
  std::vector<std::string> common, uncommon;
  std::string fixed_text = header + question;  // ASCII: lower-cased as the scorer would
  for (char& ch : fixed_text) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
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
  const std::string examples = worked_examples(o, header, question, uncommon);
  const size_t singles = uncommon.size();
  // Past the single words, "adjective-noun" pairs in seeded order. Each word of a pair is an
  // entry of its own too, and tokenizers split at the hyphen, so a word in k pairs occurs
  // uncommon_freq * (1 + k) times: k stays low enough that this is below common_freq, or the
  // pairs' words would be as common as the asked ones (drawn freely, at 64k Llama-3 tokens
  // some occurred 54 times against the asked 30).
  const int64_t pairs_per_word = (o.common_freq - 1) / o.uncommon_freq - 1;
  std::vector<std::pair<const std::string*, const std::string*>> pairs;
  // An example's word is in no pair: the examples' words are theirs alone.
  std::unordered_set<std::string> free_words(uncommon.begin(), uncommon.end());
  if (pairs_per_word > 0)
    for (const std::string& a : adjective_words())
      for (const std::string& n : noun_words())
        if (free_words.count(a) && free_words.count(n)) pairs.emplace_back(&a, &n);
  Rng pair_order = substream(o.seed, 1);
  shuffle(pairs, pair_order);
  std::unordered_map<const std::string*, int64_t> in_pairs;
  size_t next_pair = 0;
  // Makes the list hold `n` other words; false when the lists have no more.
  auto grow_to = [&](int64_t n) {
    while (static_cast<int64_t>(uncommon.size()) < n) {
      if (next_pair == pairs.size()) return false;
      const auto [a, b] = pairs[next_pair++];
      if (in_pairs[a] >= pairs_per_word || in_pairs[b] >= pairs_per_word) continue;
      ++in_pairs[a], ++in_pairs[b];
      uncommon.push_back(*a + "-" + *b);
    }
    return true;
  };

  auto build = [&](int64_t n) {
    std::vector<const std::string*> list;
    for (const auto& w : common) list.insert(list.end(), o.common_freq, &w);
    for (int64_t i = 0; i < n; ++i) list.insert(list.end(), o.uncommon_freq, &uncommon[i]);
    Rng order = substream(o.seed, 2);
    shuffle(list, order);
    return examples + header + numbered(list) + question;
  };
  const int64_t asked_only = count_tokens(tokenizer, build(0));
  KVB_CHECK(asked_only <= o.target_tokens, task, ": ", o.target_tokens,
            " tokens cannot hold even the asked words' ", o.num_common * o.common_freq, " entries",
            o.shots ? " and the worked examples" : "", " (", asked_only,
            " tokens); lower common_freq, num_common or shots");
  const int64_t n = fit_filler(
      [&](int64_t m) {
        return grow_to(m) ? count_tokens(tokenizer, build(m)) : std::numeric_limits<int64_t>::max();
      },
      o.target_tokens, task);
  KVB_CHECK(grow_to(n + 1), task, ": the word lists hold ", singles, " single words and ",
            uncommon.size() - singles, " pairs whose words stay below common_freq (", o.common_freq,
            ") at uncommon_freq ", o.uncommon_freq, ": at most ", count_tokens(tokenizer, build(n)),
            " tokens, not ", o.target_tokens,
            "; lower target_tokens or uncommon_freq, or raise common_freq");

  TaskSample s;
  s.prompt = build(n);
  s.answer_prefix = answer_prefix;
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
