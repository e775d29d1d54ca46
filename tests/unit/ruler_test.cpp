// The synthetic long-context tasks: lengths, needle placement and the structure every task
// promises (distractors, chains, word counts, JSON), their scorers on hand-computed examples,
// and the factory's parameter checks. Parametrised over task_names(), so a new task is tested
// for seeding and length as soon as it is in the factory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/workloads/passkey.h"
#include "kvbench/workloads/ruler.h"
#include "kvbench/workloads/task_factory.h"
#include "kvbench/workloads/word_lists.h"

namespace kvbench {
namespace {

using nlohmann::json;

const Tokenizer& tiny() {
  static const Tokenizer tok =
      Tokenizer::from_json(tiny_tokenizer_json(512), tiny_tokenizer_config());
  return tok;
}

double char_fraction(const std::string& prompt, const std::string& needle) {
  const size_t at = prompt.find(needle);
  EXPECT_NE(at, std::string::npos) << needle;
  return static_cast<double>(at) / static_cast<double>(prompt.size());
}

std::string between(const std::string& s, const std::string& from, const std::string& to) {
  const size_t a = s.find(from);
  EXPECT_NE(a, std::string::npos) << from;
  const size_t b = s.find(to, a + from.size());
  EXPECT_NE(b, std::string::npos) << to;
  return s.substr(a + from.size(), b - a - from.size());
}

struct Needle {
  std::string key, value;
};

std::vector<Needle> needles_in(const std::string& prompt, const std::string& kind = "numbers") {
  std::vector<Needle> out;
  const std::regex re("One of the special magic " + kind + " for (\\S+) is: ([^\\s.]+)\\.");
  for (std::sregex_iterator it(prompt.begin(), prompt.end(), re), end; it != end; ++it) {
    out.push_back({(*it)[1], (*it)[2]});
  }
  return out;
}

json params_for(int64_t target, uint64_t seed) {
  return {{"target_tokens", target}, {"seed", seed}};
}

class RulerEveryTask : public ::testing::TestWithParam<std::string> {};

TEST_P(RulerEveryTask, SeededAndFillsTheTokenBudget) {
  const std::string task = GetParam();
  // Common words need room for 10 words x 30 entries (~2.5k tiny tokens) and the worked
  // example's 190 entries (~1.8k) before any filler.
  const std::vector<int64_t> targets =
      task == "common_words" ? std::vector<int64_t>{6144, 8192} : std::vector<int64_t>{2048, 4096};
  for (int64_t target : targets) {
    const TaskSample a = make_task_sample(task, tiny(), params_for(target, 5));
    const TaskSample b = make_task_sample(task, tiny(), params_for(target, 5));
    const TaskSample c = make_task_sample(task, tiny(), params_for(target, 6));
    EXPECT_EQ(a.prompt, b.prompt);
    EXPECT_EQ(a.answers, b.answers);
    EXPECT_EQ(a.id, b.id);
    EXPECT_NE(a.prompt, c.prompt);
    EXPECT_NE(a.answers, c.answers);
    EXPECT_NE(a.id, c.id);
    EXPECT_EQ(a.id.rfind(task + "-5-" + std::to_string(target), 0), 0u) << a.id;
    EXPECT_FALSE(a.answers.empty());
    EXPECT_EQ(a.prompt_tokens,
              static_cast<int64_t>(tiny().encode(a.prompt, /*add_special_tokens=*/true).size()));
    EXPECT_LE(a.prompt_tokens, target) << task;
    EXPECT_GE(a.prompt_tokens, target * 97 / 100) << task;
    // Every answer is in the prompt (the task is solvable from its text).
    for (const auto& answer : a.answers) {
      EXPECT_NE(a.prompt.find(answer), std::string::npos) << task << ": " << answer;
    }
  }
}

TEST_P(RulerEveryTask, CloseToSmallTargets) {
  const std::string task = GetParam();
  if (task == "common_words") {
    // The 300 entries of the asked words alone take ~1.5k tiny tokens; at 4 and 1 times the
    // asked words and the (short target's) worked example take ~0.9k.
    EXPECT_THROW(make_task_sample(task, tiny(), params_for(1024, 1)), Error);
    const TaskSample s = make_task_sample(
        task, tiny(), {{"target_tokens", 1024}, {"common_freq", 4}, {"uncommon_freq", 1}});
    EXPECT_LE(s.prompt_tokens, 1024);
    EXPECT_GE(s.prompt_tokens, 1024 * 95 / 100);
    return;
  }
  for (int64_t target : {512, 1024}) {
    const TaskSample s = make_task_sample(task, tiny(), params_for(target, 2));
    EXPECT_LE(s.prompt_tokens, target) << task;
    EXPECT_GE(s.prompt_tokens, target * 95 / 100) << task << " at " << target;
  }
}

TEST_P(RulerEveryTask, RefusesABudgetBelowTheBarePrompt) {
  EXPECT_THROW(make_task_sample(GetParam(), tiny(), params_for(20, 0)), Error);
}

TEST_P(RulerEveryTask, ScoresAPerfectAnswerOne) {
  const std::string task = GetParam();
  const TaskSample s =
      make_task_sample(task, tiny(), params_for(task == "common_words" ? 6144 : 4096, 3));
  std::string output;
  for (const auto& a : s.answers) output += " " + a + ",";
  EXPECT_EQ(score_task_sample(task, output, s), 1.0) << output;
  EXPECT_EQ(score_task_sample(task, " nothing here", s), 0.0);
}

// Occurrences of `word` in `text` not inside a longer run of letters, digits or dashes (a
// 4-digit value inside a 7-digit number, a name inside a longer name, do not count).
int64_t whole_occurrences(const std::string& text, const std::string& word) {
  auto part = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; };
  int64_t n = 0;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1))
    n += (at == 0 || !part(text[at - 1])) &&
         (at + word.size() == text.size() || !part(text[at + word.size()]));
  return n;
}

// Each answer sits in the prompt exactly as often as the task places it: a string-match score
// credits the answer's text, so a second copy elsewhere (a distractor holding it, filler
// containing it) would make the task ambiguous, and a missing one unsolvable. The pass key is
// stated twice; a variable-tracking name is assigned once and read by the next link (the last
// name only assigned); the common words common_freq times; every other answer once.
TEST_P(RulerEveryTask, EachAnswerOccursAsOftenAsTheTaskPlacesIt) {
  const std::string task = GetParam();
  const int64_t target = task == "common_words" ? 6144 : 2048;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    const TaskSample s = make_task_sample(task, tiny(), params_for(target, seed));
    for (size_t i = 0; i < s.answers.size(); ++i) {
      const int64_t want = task == "passkey"             ? 2
                           : task == "common_words"      ? 30
                           : task == "variable_tracking" ? (i + 1 < s.answers.size() ? 2 : 1)
                                                         : 1;
      EXPECT_EQ(whole_occurrences(s.prompt, s.answers[i]), want)
          << task << " seed " << seed << ": " << s.answers[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Tasks, RulerEveryTask, ::testing::ValuesIn(task_names()),
                         [](const auto& info) { return info.param; });

TEST(RulerTasks, NamesCoverEveryTask) {
  EXPECT_EQ(task_names(),
            (std::vector<std::string>{"passkey", "associative_recall", "niah_single",
                                      "niah_multikey", "niah_multivalue", "niah_multiquery",
                                      "variable_tracking", "common_words", "kv_retrieval"}));
}

TEST(RulerWordLists, DistinctLowerCaseWords) {
  std::set<std::string> all;
  for (const auto* list : {&adjective_words(), &noun_words()}) {
    EXPECT_GE(list->size(), 250u);
    for (const auto& w : *list) {
      EXPECT_TRUE(std::all_of(w.begin(), w.end(), [](char c) { return c >= 'a' && c <= 'z'; }))
          << w;
      EXPECT_TRUE(all.insert(w).second) << "duplicate " << w;
    }
  }
}

TEST(RulerNiah, SingleNeedleAtItsDepth) {
  for (double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    NeedleOptions o;
    o.target_tokens = 2048;
    o.depth = depth;
    o.seed = 11;
    const TaskSample s = make_needle_task(tiny(), o);
    ASSERT_EQ(s.answers.size(), 1u);
    EXPECT_EQ(s.answers[0].size(), 7u);
    const auto needles = needles_in(s.prompt);
    ASSERT_EQ(needles.size(), 1u);
    EXPECT_EQ(needles[0].value, s.answers[0]);
    EXPECT_NEAR(char_fraction(s.prompt, "for " + needles[0].key + " is: "), depth, 0.08);
    EXPECT_NEAR(s.needle_depth, depth, 0.02);
    EXPECT_EQ(s.prompt.rfind("A special magic number is hidden", 0), 0u);
    const std::string tail = "What is the special magic number for " + needles[0].key +
                             " mentioned in the provided text? The special magic number for " +
                             needles[0].key + " mentioned in the provided text is";
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - tail.size()), tail);
  }
}

// The asked key has exactly one needle; no distractor repeats the key or the answer.
void expect_distractors_differ(const TaskSample& s, size_t min_needles) {
  const auto needles = needles_in(s.prompt);
  EXPECT_GE(needles.size(), min_needles);
  ASSERT_EQ(s.answers.size(), 1u);
  const std::string asked = between(s.prompt, "What is the special magic number for ", " ");
  int hits = 0;
  std::set<std::string> keys, values;
  for (const auto& n : needles) {
    EXPECT_TRUE(keys.insert(n.key).second) << "repeated key " << n.key;
    EXPECT_TRUE(values.insert(n.value).second) << "repeated value " << n.value;
    if (n.key == asked) {
      ++hits;
      EXPECT_EQ(n.value, s.answers[0]);
    } else {
      EXPECT_NE(n.value, s.answers[0]);
    }
  }
  EXPECT_EQ(hits, 1);
}

TEST(RulerNiah, MultiKeyDistractorsNeverEqualTheAnswer) {
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const TaskSample s =
        make_task_sample("niah_multikey", tiny(), {{"target_tokens", 2048}, {"seed", seed}});
    EXPECT_EQ(needles_in(s.prompt).size(), 4u);
    expect_distractors_differ(s, 4);
    // The asked needle at depth 0.5, the 3 distractors at 1/4, 1/2, 3/4.
    std::vector<double> where;
    for (const auto& n : needles_in(s.prompt)) {
      where.push_back(char_fraction(s.prompt, "for " + n.key + " is"));
    }
    std::sort(where.begin(), where.end());
    EXPECT_NEAR(where[0], 0.25, 0.08);
    EXPECT_NEAR(where[3], 0.75, 0.08);
  }
  // A haystack made of needles: hundreds of distractors, all distinct from the asked one.
  const TaskSample s = make_task_sample(
      "niah_multikey", tiny(),
      {{"target_tokens", 4096}, {"haystack", "needle"}, {"depth", 0.3}, {"seed", 9}});
  expect_distractors_differ(s, 50);
  const std::string asked = between(s.prompt, "What is the special magic number for ", " ");
  EXPECT_NEAR(char_fraction(s.prompt, "for " + asked + " is"), 0.3, 0.08);
}

TEST(RulerNiah, MultiValueListsEveryValue) {
  const TaskSample s =
      make_task_sample("niah_multivalue", tiny(), {{"target_tokens", 2048}, {"seed", 4}});
  ASSERT_EQ(s.answers.size(), 4u);
  EXPECT_EQ(std::set<std::string>(s.answers.begin(), s.answers.end()).size(), 4u);
  const auto needles = needles_in(s.prompt);
  ASSERT_EQ(needles.size(), 4u);
  const std::string asked = between(s.prompt, "What are all the special magic numbers for ", " ");
  std::set<std::string> found;
  for (const auto& n : needles) {
    EXPECT_EQ(n.key, asked);
    found.insert(n.value);
  }
  EXPECT_EQ(found, std::set<std::string>(s.answers.begin(), s.answers.end()));
  EXPECT_EQ(s.prompt.rfind("Some special magic numbers are hidden", 0), 0u);
  EXPECT_EQ(s.prompt.substr(s.prompt.size() - 4), " are");
  // The first value at the requested depth.
  EXPECT_NEAR(char_fraction(s.prompt, "is: " + s.answers[0] + "."), 0.5, 0.08);
}

TEST(RulerNiah, MultiQueryAsksEveryKey) {
  const TaskSample s = make_task_sample(
      "niah_multiquery", tiny(),
      {{"target_tokens", 2048}, {"seed", 8}, {"key_type", "numbers"}, {"value_type", "uuids"}});
  const auto needles = needles_in(s.prompt, "uuids");
  ASSERT_EQ(needles.size(), 4u);
  ASSERT_EQ(s.answers.size(), 4u);
  EXPECT_NE(s.prompt.find("What are all the special magic uuids for "), std::string::npos);
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  const std::string query =
      between(s.prompt, "What are all the special magic uuids for ", " mentioned");
  for (size_t i = 0; i < needles.size(); ++i) {
    EXPECT_TRUE(std::regex_match(needles[i].value, uuid)) << needles[i].value;
    EXPECT_EQ(needles[i].key.size(), 7u);
    EXPECT_NE(query.find(needles[i].key), std::string::npos) << query;
  }
  // Answers are every asked key's value, in the order the keys are asked.
  std::map<std::string, std::string> value_of;
  for (const auto& n : needles) value_of[n.key] = n.value;
  std::vector<std::string> expected;
  const std::regex key_re("\\d{7}");
  for (std::sregex_iterator it(query.begin(), query.end(), key_re), end; it != end; ++it) {
    expected.push_back(value_of[it->str()]);
  }
  EXPECT_EQ(expected, s.answers);
  EXPECT_NE(query.find(", and "), std::string::npos);
}

// A needle task of `keys` word keys ("adjective-noun") in `target` tokens.
NeedleOptions word_key_options(uint64_t seed, int64_t target, int64_t keys, HaystackType haystack) {
  NeedleOptions o;
  o.target_tokens = target;
  o.seed = seed;
  o.num_keys = keys;
  o.key_type = NeedleKeyType::kWords;
  o.haystack = haystack;
  return o;
}

// No other key holds an asked one or sits inside it ("bold-carpet" beside an asked "old-car"):
// over a needle haystack of word keys, each asked key occurs in its own needle and the question
// (twice) only. (Such a pair is rare, about 1e-5 of random keys: this checks the invariant on
// some 1,000 keys rather than forcing a redraw.)
TEST(RulerNiah, NoOtherKeyOverlapsAnAskedOne) {
  for (uint64_t seed = 0; seed < 12; ++seed) {
    const TaskSample s =
        make_needle_task(tiny(), word_key_options(seed, 4096, 4, HaystackType::kNeedle));
    const auto needles = needles_in(s.prompt);
    ASSERT_GT(needles.size(), 50u);
    // The asked key, from the answer prefix " The special magic number for KEY mentioned ...".
    const std::string lead = " The special magic number for ";
    ASSERT_EQ(s.answer_prefix.rfind(lead, 0), 0u);
    const std::string key =
        s.answer_prefix.substr(lead.size(), s.answer_prefix.find(" mentioned") - lead.size());
    ASSERT_FALSE(key.empty());
    size_t count = 0;
    for (size_t at = s.prompt.find(key); at != std::string::npos; at = s.prompt.find(key, at + 1))
      ++count;
    EXPECT_EQ(count, 3u) << "seed " << seed << ", key " << key;
    for (const auto& n : needles)
      if (n.key != key)
        EXPECT_TRUE(n.key.find(key) == std::string::npos && key.find(n.key) == std::string::npos)
            << n.key << " beside " << key;
  }
}

// With every key asked, every pair of keys is checked. A nested pair is rare (4.2e-7 of ordered
// pairs: "bold"/"old" and "carpet"/"car" kinds), so the seeds are ones whose draw held one
// before keys were drawn again ("careful-wall" beside "careful-wallet" at seed 10).
TEST(RulerNiah, NoKeyNestsInAnotherWhenAllAreAsked) {
  for (const uint64_t seed : {10, 50, 78}) {
    // 20,000 of the tiny tokenizer's tokens: 300 needles and the question take ~17.6k.
    NeedleOptions o = word_key_options(seed, 20000, 300, HaystackType::kRepeat);
    o.num_queries = 300;
    const TaskSample s = make_needle_task(tiny(), o);
    const auto needles = needles_in(s.prompt);
    ASSERT_EQ(needles.size(), 300u);
    for (size_t a = 0; a < needles.size(); ++a)
      for (size_t b = 0; b < needles.size(); ++b)
        if (a != b)
          EXPECT_EQ(needles[a].key.find(needles[b].key), std::string::npos)
              << "seed " << seed << ": " << needles[b].key << " inside " << needles[a].key;
  }
}

TEST(RulerNiah, RejectsImpossibleCounts) {
  NeedleOptions o;
  o.num_keys = 2;
  o.num_queries = 3;
  EXPECT_THROW(make_needle_task(tiny(), o), Error);
  o.num_queries = 1;
  o.depth = -0.1;
  EXPECT_THROW(make_needle_task(tiny(), o), Error);
}

// Follows "VAR Y = VAR X" links in the generated text to the literal each variable holds.
std::map<std::string, std::string> resolve_variables(const std::string& prompt) {
  std::map<std::string, std::string> literal, link;
  const std::regex assign("VAR ([A-Z]{5}) = (VAR ([A-Z]{5})|(\\d{5}))");
  for (std::sregex_iterator it(prompt.begin(), prompt.end(), assign), end; it != end; ++it) {
    const std::string name = (*it)[1];
    EXPECT_FALSE(literal.count(name) || link.count(name)) << "assigned twice: " << name;
    if ((*it)[4].matched) {
      literal[name] = (*it)[4];
    } else {
      link[name] = (*it)[3];
    }
  }
  std::map<std::string, std::string> value = literal;
  for (const auto& [name, _] : link) {
    std::string at = name;
    for (int hops = 0; !literal.count(at); ++hops) {
      EXPECT_LT(hops, 1000) << "cycle at " << name;
      EXPECT_TRUE(link.count(at)) << "unassigned " << at;
      if (!link.count(at) || hops >= 1000) break;
      at = link[at];
    }
    value[name] = literal.count(at) ? literal[at] : "";
  }
  return value;
}

TEST(RulerVariableTracking, ChainsResolveToTheAskedValue) {
  for (int64_t chains : {1, 3}) {
    for (double depth : {0.0, 0.4}) {
      const TaskSample s = make_task_sample(
          "variable_tracking", tiny(),
          {{"target_tokens", 2048}, {"num_chains", chains}, {"depth", depth}, {"seed", 21}});
      ASSERT_EQ(s.answers.size(), 5u);  // 4 hops name 5 variables
      const std::string asked = between(s.prompt, "assigned the value ", " in the text");
      const auto value = resolve_variables(s.prompt);
      EXPECT_EQ(value.size(), static_cast<size_t>(5 * chains));
      std::set<std::string> holding;
      for (const auto& [name, v] : value) {
        if (v == asked) holding.insert(name);
      }
      EXPECT_EQ(holding, std::set<std::string>(s.answers.begin(), s.answers.end()));
      // The chain starts with the literal, at the requested depth, and runs forward.
      EXPECT_NEAR(char_fraction(s.prompt, "VAR " + s.answers[0] + " = " + asked), depth, 0.08);
      double last = -1;
      for (size_t j = 1; j < s.answers.size(); ++j) {
        const double at =
            char_fraction(s.prompt, "VAR " + s.answers[j] + " = VAR " + s.answers[j - 1]);
        EXPECT_GT(at, last);
        last = at;
      }
      EXPECT_NE(s.prompt.find("5 variables are assigned the value " + asked + ", they are:"),
                std::string::npos);
    }
  }
}

// Parses "1. word 2. word ..." back into counts, checking the numbering.
std::map<std::string, int64_t> list_counts(const std::string& list) {
  std::map<std::string, int64_t> counts;
  const std::regex entry("(\\d+)\\. (\\S+)");
  int64_t expected_number = 1;
  for (std::sregex_iterator it(list.begin(), list.end(), entry), end; it != end; ++it) {
    EXPECT_EQ(std::stoll((*it)[1]), expected_number++);
    ++counts[(*it)[2]];
  }
  return counts;
}

// The sample's own list: the last one, after the worked examples.
std::string sample_list(const TaskSample& s) {
  const size_t from = s.prompt.rfind("most often.\n");
  EXPECT_NE(from, std::string::npos);
  return between(s.prompt.substr(from), "most often.\n", "\nQuestion:");
}

std::map<std::string, int64_t> word_counts(const TaskSample& s) {
  return list_counts(sample_list(s));
}

// No asked word is in the header or the question either, in any case ("common" is an adjective
// of the word lists and the question asks for the "most common words"; the noun "answer" is in
// its "Answer:"): over many seeds, each occurs in the whole lower-cased prompt, as the scorer
// reads an output, exactly common_freq times, as a substring.
TEST(RulerCommonWords, NoAskedWordIsInTheInstructions) {
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const TaskSample s = make_task_sample(
        "common_words", tiny(),
        {{"target_tokens", 1024}, {"common_freq", 4}, {"uncommon_freq", 1}, {"seed", seed}});
    std::string prompt = s.prompt;
    for (char& ch : prompt) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const auto& a : s.answers) {
      int64_t found = 0;
      for (size_t at = prompt.find(a); at != std::string::npos; at = prompt.find(a, at + 1))
        ++found;
      EXPECT_EQ(found, 4) << "seed " << seed << ": " << a;
    }
  }
}

TEST(RulerCommonWords, CountsExactlyAsSpecified) {
  struct Case {
    int64_t target, num_common, common_freq, uncommon_freq;
  };
  // The last case runs past the single words into "adjective-noun" pairs.
  for (const Case& c : {Case{6144, 10, 30, 3}, Case{2048, 5, 6, 2}, Case{8192, 10, 4, 1}}) {
    const TaskSample s = make_task_sample("common_words", tiny(),
                                          {{"target_tokens", c.target},
                                           {"num_common", c.num_common},
                                           {"common_freq", c.common_freq},
                                           {"uncommon_freq", c.uncommon_freq},
                                           {"seed", 2}});
    ASSERT_EQ(static_cast<int64_t>(s.answers.size()), c.num_common);
    const auto counts = word_counts(s);
    int64_t uncommon = 0;
    for (const auto& [word, n] : counts) {
      const bool asked = std::find(s.answers.begin(), s.answers.end(), word) != s.answers.end();
      EXPECT_EQ(n, asked ? c.common_freq : c.uncommon_freq) << word;
      uncommon += asked ? 0 : 1;
    }
    for (const auto& a : s.answers) EXPECT_EQ(counts.count(a), 1u) << a;
    // As substrings too (what string_match_all looks for): no other entry holds an asked word
    // ("car" in "carpet" or "bold-car"), so the list holds each exactly common_freq times.
    const std::string list = sample_list(s);
    for (const auto& a : s.answers) {
      int64_t found = 0;
      for (size_t at = list.find(a); at != std::string::npos; at = list.find(a, at + 1)) ++found;
      EXPECT_EQ(found, c.common_freq) << a;
    }
    EXPECT_GT(uncommon, 0);
    if (c.target == 8192) EXPECT_GT(uncommon, 646) << "expected adjective-noun pairs";
    // A pair's words are words of the list too (tokenizers split at the hyphen): alone and in
    // pairs, every other word stays below the asked words' count.
    std::map<std::string, int64_t> words;
    for (const auto& [entry, n] : counts) {
      for (size_t from = 0;;) {
        const size_t dash = entry.find('-', from);
        words[entry.substr(from, dash - from)] += n;
        if (dash == std::string::npos) break;
        from = dash + 1;
      }
    }
    for (const auto& [word, n] : words) {
      const bool asked = std::find(s.answers.begin(), s.answers.end(), word) != s.answers.end();
      if (!asked) EXPECT_LT(n, c.common_freq) << word;
    }
    EXPECT_NE(s.prompt.find("What are the " + std::to_string(c.num_common) + " most common words"),
              std::string::npos);
  }
  EXPECT_THROW(make_common_words(tiny(), {4096, 10, 3, 3, 0}), Error);
}

// A target the word lists cannot fill at the asked frequencies is refused, saying how far they
// reach, not filled with pairs whose words outnumber the asked ones; a target that cannot hold
// the asked words themselves names the frequencies.
TEST(RulerCommonWords, TargetsPastTheWordListsAreRefusedWithTheReach) {
  try {
    make_common_words(tiny(), {8192, 10, 2, 1, 0});
    FAIL() << "pairs at common_freq 2 would hold their words twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("0 pairs whose words stay below common_freq (2)"),
              std::string::npos)
        << e.what();
  }
  try {
    make_common_words(tiny(), {1024, 10, 30, 3, 0});
    FAIL() << "300 asked entries do not fit 1024 tokens";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lower common_freq, num_common or shots"),
              std::string::npos)
        << e.what();
  }
}

// RULER's worked example comes first: its own list (40 words: the asked number 10 times, 30
// others 3 times; below 4096 target tokens 20 words at 3 and 1), its question, and its answer
// numbered; then the sample. No word of an example is in the sample's list, in a pair of it,
// or in another example.
TEST(RulerCommonWords, WorkedExamplesComeFirstWithTheirAnswers) {
  struct Case {
    int64_t target, shots, num_common, asked_freq, other_freq, others;
  };
  for (const Case& c :
       {Case{4096, 1, 10, 10, 3, 30}, Case{2048, 2, 5, 3, 1, 10}, Case{8192, 3, 10, 10, 3, 30}}) {
    const TaskSample s = make_task_sample("common_words", tiny(),
                                          {{"target_tokens", c.target},
                                           {"num_common", c.num_common},
                                           {"common_freq", 4},
                                           {"uncommon_freq", 1},
                                           {"shots", c.shots},
                                           {"seed", 3}});
    const std::string header =
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n";
    const std::string count = std::to_string(c.num_common);
    const std::string ask = "\nQuestion: What are the " + count +
                            " most common words in the above list? Answer: The top " + count +
                            " words that appear most often in the list are: ";
    ASSERT_EQ(s.prompt.rfind(header, 0), 0u);
    std::set<std::string> seen;  // every word of the examples so far
    size_t at = 0;
    for (int64_t e = 0; e < c.shots; ++e) {
      ASSERT_EQ(s.prompt.compare(at, header.size(), header), 0) << "example " << e;
      const size_t ask_at = s.prompt.find(ask, at);
      const size_t end = s.prompt.find('\n', ask_at + 1);
      ASSERT_NE(end, std::string::npos);
      const auto counts =
          list_counts(s.prompt.substr(at + header.size(), ask_at - at - header.size()));
      const auto answer =
          list_counts(s.prompt.substr(ask_at + ask.size(), end - ask_at - ask.size()));
      EXPECT_EQ(static_cast<int64_t>(counts.size()), c.num_common + c.others);
      EXPECT_EQ(static_cast<int64_t>(answer.size()), c.num_common);
      for (const auto& [word, n] : counts) {
        EXPECT_EQ(n, answer.count(word) ? c.asked_freq : c.other_freq) << word;
        EXPECT_TRUE(seen.insert(word).second) << word << " in two examples";
      }
      for (const auto& [word, n] : answer) EXPECT_TRUE(counts.count(word)) << word;
      at = end + 1;
    }
    EXPECT_EQ(s.prompt.compare(at, header.size(), header), 0) << "the sample after the examples";
    EXPECT_EQ(s.prompt.find(header, at + 1), std::string::npos);
    for (const auto& [entry, n] : word_counts(s))
      for (size_t from = 0;;) {  // each word of an entry, a pair's two
        const size_t dash = entry.find('-', from);
        EXPECT_FALSE(seen.count(entry.substr(from, dash - from))) << entry;
        if (dash == std::string::npos) break;
        from = dash + 1;
      }
    for (const auto& a : s.answers) EXPECT_FALSE(seen.count(a)) << a;
  }
  // Without examples the sample stands alone.
  const TaskSample none = make_task_sample(
      "common_words", tiny(),
      {{"target_tokens", 2048}, {"common_freq", 4}, {"uncommon_freq", 1}, {"shots", 0}});
  EXPECT_EQ(none.prompt.find("Below is a numbered list", 1), std::string::npos);
}

TEST(RulerKvRetrieval, JsonParsesAndHoldsTheAnswerAtItsDepth) {
  for (double depth : {0.0, 0.3, 1.0}) {
    const TaskSample s =
        make_task_sample("kv_retrieval", tiny(), {{"target_tokens", 3000}, {"depth", depth}});
    const std::string text = between(s.prompt, "JSON data:\n", "\n\nKey:");
    const nlohmann::ordered_json object = nlohmann::ordered_json::parse(text);
    ASSERT_TRUE(object.is_object());
    EXPECT_GT(object.size(), 10u);
    const std::string key = between(s.prompt, "Key: \"", "\"");
    ASSERT_TRUE(object.contains(key));
    ASSERT_EQ(s.answers.size(), 1u);
    EXPECT_EQ(object[key], s.answers[0]);
    size_t index = 0, at = 0;
    std::set<std::string> values;
    for (const auto& item : object.items()) {
      if (item.key() == key) at = index;
      values.insert(item.value().get<std::string>());
      ++index;
    }
    EXPECT_EQ(values.size(), object.size()) << "values repeat";
    EXPECT_NEAR(static_cast<double>(at) / static_cast<double>(object.size() - 1), depth, 0.02);
    EXPECT_NEAR(char_fraction(s.prompt, "\"" + key + "\": "), depth, 0.08);
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - 20), "Corresponding value:");
  }
}

TEST(RulerScorers, HandComputedFractions) {
  const std::vector<std::string> values = {"1234567", "7654321", "1111111", "2222222"};
  EXPECT_EQ(needle_score("1234567, 7654321, 1111111 and 2222222", values), 1.0);
  // 3 of 4 values listed.
  EXPECT_DOUBLE_EQ(needle_score("They are 1234567, 1111111, 2222222.", values), 0.75);
  // Lower-cased: 2 of 5 variable names, in any case.
  EXPECT_DOUBLE_EQ(
      variable_tracking_score("abcde and FghiJ", {"ABCDE", "FGHIJ", "KLMNO", "PQRST", "UVWXY"}),
      0.4);
  const std::vector<std::string> words = {"apple", "river", "stone", "cloud", "tiger",
                                          "lemon", "piano", "ocean", "tulip", "wagon"};
  EXPECT_DOUBLE_EQ(common_words_score("1. Apple 2. river 3. stone 4. cloud 5. tiger 6. lemon "
                                      "7. piano 8. moon 9. sun 10. star",
                                      words),
                   0.7);
  const std::string uuid = "4a1f0c2e-9b7d-4e3a-8c5f-0d1e2f3a4b5c";
  EXPECT_EQ(kv_retrieval_score(uuid, {uuid}), 1.0);
  EXPECT_EQ(kv_retrieval_score(" \"" + uuid + "\".", {uuid}), 1.0);
  EXPECT_EQ(kv_retrieval_score("4a1f0c2e-9b7d-4e3a-8c5f-0d1e2f3a4b5d", {uuid}), 0.0);
  // Case-insensitive, as Lost in the Middle's scorer; the value with its hyphens dropped is
  // another string (LongBench's normalised match credited it).
  EXPECT_EQ(kv_retrieval_score("4A1F0C2E-9B7D-4E3A-8C5F-0D1E2F3A4B5C", {uuid}), 1.0);
  EXPECT_EQ(kv_retrieval_score("4a1f0c2e9b7d4e3a8c5f0d1e2f3a4b5c", {uuid}), 0.0);
  // Through the factory's dispatch, with references from a sample.
  TaskSample s;
  s.answers = values;
  EXPECT_DOUBLE_EQ(score_task_sample("niah_multivalue", "7654321 and 2222222", s), 0.5);
  s.answers = {"12345"};
  EXPECT_EQ(score_task_sample("passkey", "The pass key is 12345.", s), 1.0);
  EXPECT_EQ(score_task_sample("passkey", "123456", s), 0.0);
}

std::string config_error(const std::string& task, const json& params,
                         const std::string& path = "") {
  try {
    make_task_sample(task, tiny(), params, path);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(RulerFactory, RejectsBadParamsNamingTheKey) {
  EXPECT_EQ(config_error("niah_multikey", {{"num_keys", 0}}, "suites[0].tasks[1]"),
            "config: suites[0].tasks[1].num_keys: expected integer in [1, 1000], got 0");
  EXPECT_NE(config_error("passkey", {{"depth", 1.5}})
                .find("config: depth: expected number in "
                      "[0, 1], got 1.5"),
            std::string::npos);
  const std::string unknown_key = config_error("niah_single", {{"num_key", 2}});
  EXPECT_NE(unknown_key.find("num_key: unknown key (did you mean 'num_keys'?)"), std::string::npos)
      << unknown_key;
  EXPECT_NE(unknown_key.find("valid keys: task, name, target_tokens"), std::string::npos)
      << unknown_key;
  const std::string unknown_task = config_error("niah_multi_key", json::object(), "tasks[0]");
  EXPECT_NE(
      unknown_task.find("tasks[0].task: unknown task 'niah_multi_key' (did you mean "
                        "'niah_multikey'?); valid tasks: passkey, associative_recall, niah_single"),
      std::string::npos)
      << unknown_task;
  EXPECT_NE(config_error("niah_multiquery", {{"num_keys", 2}})
                .find("num_queries: expected at "
                      "most num_keys (2), got 4"),
            std::string::npos);
  EXPECT_NE(config_error("niah_single", {{"key_type", "letters"}})
                .find("key_type: expected one "
                      "of"),
            std::string::npos);
  EXPECT_NE(config_error("common_words", {{"common_freq", 3}, {"uncommon_freq", 3}})
                .find("uncommon_freq: expected less than common_freq (3), got 3"),
            std::string::npos);
  EXPECT_NE(config_error("variable_tracking", {{"num_hops", 0}}).find("num_hops"),
            std::string::npos);
  EXPECT_NE(config_error("kv_retrieval", {{"target_tokens", "4k"}}).find("target_tokens"),
            std::string::npos);
  EXPECT_NE(config_error("kv_retrieval", {{"task", "passkey"}}).find("task: expected"),
            std::string::npos);
  EXPECT_NE(config_error("kv_retrieval", json::array()).find("expected an object"),
            std::string::npos);
  // The config's own "task" key passes.
  EXPECT_NO_THROW(
      make_task_sample("kv_retrieval", tiny(), {{"task", "kv_retrieval"}, {"target_tokens", 600}}));
  EXPECT_THROW(task_param_specs("nope"), ConfigError);
  for (const auto& spec : task_param_specs("niah_multiquery")) {
    if (spec.name == "num_queries") EXPECT_EQ(spec.default_value, 4);
  }
}

// The same length guarantees with a real tokenizer, when scripts/fetch_tokenizers.sh has run.
const Tokenizer* llama3() {
  static std::unique_ptr<Tokenizer> tok = [] {
    namespace fs = std::filesystem;
    const char* env = std::getenv("KVBENCH_NPM_CACHE");
    const char* home = std::getenv("HOME");
    const fs::path dir =
        (env && *env ? fs::path(env)
                     : fs::path(home ? home : "/root") / ".cache" / "kvbench" / "npm") /
        "node_modules" / "@lenml" / "tokenizer-llama3" / "models";
    return fs::exists(dir / "tokenizer.json")
               ? std::make_unique<Tokenizer>(Tokenizer::load(dir.string()))
               : nullptr;
  }();
  return tok.get();
}

TEST(RulerTasks, FillTheBudgetInLlama3Tokens) {
  const Tokenizer* tok = llama3();
  if (tok == nullptr) GTEST_SKIP() << "no Llama-3 tokenizer: run scripts/fetch_tokenizers.sh";
  for (const auto& task : task_names()) {
    const TaskSample s = make_task_sample(task, *tok, {{"target_tokens", 4096}, {"seed", 1}});
    EXPECT_LE(s.prompt_tokens, 4096) << task;
    EXPECT_GE(s.prompt_tokens, 4096 * 97 / 100) << task;
    EXPECT_EQ(s.prompt_tokens, static_cast<int64_t>(tok->encode(s.prompt, true).size()));
  }
}

// common_words' reach in Llama-3 tokens at its default frequencies: 32k fills, 128k (more pairs
// than keep their words below the asked words' count) is refused, saying how far it reaches.
TEST(RulerCommonWords, ReachesPast32kLlama3TokensAtTheDefaults) {
  const Tokenizer* tok = llama3();
  if (tok == nullptr) GTEST_SKIP() << "no Llama-3 tokenizer: run scripts/fetch_tokenizers.sh";
  const TaskSample s = make_task_sample("common_words", *tok, {{"target_tokens", 32768}});
  EXPECT_LE(s.prompt_tokens, 32768);
  EXPECT_GE(s.prompt_tokens, 32768 * 97 / 100);
  try {
    make_task_sample("common_words", *tok, {{"target_tokens", 131072}});
    FAIL() << "128k tokens of common_words at 30/3";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pairs whose words stay below common_freq (30)"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("at most "), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvbench
