// Every scorer on worked examples computed by hand, and on tests/fixtures/scorers/cases.json:
// inputs (Unicode case and spaces, sentences, code lines, long strings) scored by the reference
// implementations themselves (Python's str, the `rouge` 1.0.1 and fuzzywuzzy 0.18.0 packages;
// scripts/scorer_fixtures.py).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kvbench/workloads/scorers.h"

namespace kvbench {
namespace {

TEST(Scorers, NormalizeAnswerAsLongBench) {
  EXPECT_EQ(normalize_answer("  The Eiffel-Tower, in PARIS!  "), "eiffeltower in paris");
  EXPECT_EQ(normalize_answer("an apple a day"), "apple day");
  EXPECT_EQ(normalized_tokens("A cat, the dog."), (std::vector<std::string>{"cat", "dog"}));
  // Python's str: Unicode case, Unicode spaces, and an article next to a non-ASCII dash (not
  // punctuation to it, so still a separate word there).
  EXPECT_EQ(normalize_answer("ÉMILE\u00a0went"), "émile went");
  EXPECT_EQ(normalize_answer("the\u2014end"), "\u2014end");
  // Letters and digits of any script are word characters, so no article is cut out of these
  // words (with ASCII-only word characters "théa" would lose its "a", "aé" its "a").
  EXPECT_EQ(normalize_answer("théa aé the٣ ǅa"), "théa aé the٣ ǆa");
}

TEST(Scorers, ExactAndSubstringMatch) {
  EXPECT_EQ(exact_match("The Paris.", {"London", "paris"}), 1.0);
  EXPECT_EQ(exact_match("Paris, France", {"paris"}), 0.0);
  EXPECT_EQ(substring_match("It is Paris, France.", {"paris france"}), 1.0);
  EXPECT_EQ(substring_match("Lyon", {"paris"}), 0.0);
}

TEST(Scorers, RulerStringMatch) {
  // 2 of 3 values found, case-insensitively.
  EXPECT_DOUBLE_EQ(string_match_all("Values: 123, ABC.", {"123", "abc", "999"}), 2.0 / 3.0);
  EXPECT_EQ(string_match_part("Values: 123", {"999", "123"}), 1.0);
  EXPECT_EQ(string_match_part("none", {"999"}), 0.0);
  EXPECT_EQ(string_match_all("x", {}), 0.0);
  EXPECT_EQ(string_match_all("ÉMILE", {"émile"}), 1.0);
}

TEST(Scorers, TokenF1) {
  // prediction tokens {cat, sat, mat}, reference {cat, on, mat}: 2 shared,
  // P = 2/3, R = 2/3, F1 = 2/3.
  EXPECT_NEAR(token_f1("The cat sat mat", {"cat on the mat"}), 2.0 / 3.0, 1e-12);
  // Overlap counts a token at most as often as the reference has it: prediction {x, x},
  // reference {x}: same = 1, P = 1/2, R = 1, F1 = 2/3.
  EXPECT_NEAR(token_f1("x x", {"x"}), 2.0 / 3.0, 1e-12);
  EXPECT_EQ(token_f1("nothing", {"else"}), 0.0);
  EXPECT_EQ(token_f1("x", {"y", "x"}), 1.0);  // best reference
}

TEST(Scorers, RougeL) {
  // Distinct words: prediction {the, cat, sat, on, mat} (5), reference {the, cat, is, on, mat}
  // (5); the LCS "the cat on the mat" has 4 distinct words: P = R = 4/5.
  const double f = 2.0 * ((0.8 * 0.8) / (0.8 + 0.8 + 1e-8));
  EXPECT_DOUBLE_EQ(rouge_l("the cat sat on the mat", {"the cat is on the mat"}), f);
  // "a b c" vs "a b c d e": LCS 3, P = 1, R = 0.6.
  EXPECT_DOUBLE_EQ(rouge_l("a b c", {"a b c d e"}), 2.0 * ((1.0 * 0.6) / (1.0 + 0.6 + 1e-8)));
  EXPECT_EQ(rouge_l("x y", {"z"}), 0.0);
  // No lowercasing; a period ends a sentence and is dropped; no sentence at all scores 0.
  EXPECT_LT(rouge_l("The Cat", {"the cat"}), 1e-7);
  EXPECT_NEAR(rouge_l("the cat sat.", {"the cat sat"}), 1.0, 1e-8);
  EXPECT_EQ(rouge_l("...", {"x"}), 0.0);
}

TEST(Scorers, EditSimilarity) {
  // difflib: kitten / sitting match "itt" then "n": M = 4, ratio 8/13, fuzz.ratio 62.
  EXPECT_DOUBLE_EQ(sequence_ratio("kitten", "sitting"), 8.0 / 13.0);
  EXPECT_EQ(fuzz_ratio("kitten", "sitting"), 62);
  EXPECT_EQ(fuzz_ratio("", ""), 100);
  EXPECT_EQ(fuzz_ratio("abc", ""), 0);
  // Rounded as Python's round: 2 x 1 / 12 = 16.67 -> 17; 2 x 1 / 16 = 12.5 -> 12 (to even).
  EXPECT_EQ(fuzz_ratio("ab", "ac"), 50);
  EXPECT_EQ(fuzz_ratio("abcd", "aefghijk"), 17);
  EXPECT_EQ(fuzz_ratio("a", "abcdefghijklmno"), 12);
  // Leading newlines are dropped; a line with a fence or comment mark anywhere is skipped.
  EXPECT_EQ(edit_similarity("```python\n# comment\nreturn x + 1\nmore", {"return x + 1"}), 1.0);
  EXPECT_EQ(edit_similarity("\nreturn x + 1", {"return x + 1"}), 1.0);
  EXPECT_EQ(edit_similarity("x = 1  # init\ny = 2", {"y = 2"}), 1.0);
}

TEST(Scorers, ClassificationCountRetrieval) {
  const std::vector<std::string> classes = {"location", "location city", "person"};
  // "location city" named; "location" is only part of it, so not a separate answer: 1/1.
  EXPECT_EQ(classification_score("Answer: location city", "location city", classes), 1.0);
  // Two different classes named: 1/2.
  EXPECT_EQ(classification_score("person or location city", "location city", classes), 0.5);
  EXPECT_EQ(classification_score("person", "location city", classes), 0.0);
  // The reference walks its list while removing: "a" goes, "ab" moves into its place and is
  // never looked at, so {ab, abc} remain: 1/2, as LongBench scores it.
  EXPECT_EQ(classification_score("abc", "abc", {"a", "ab", "abc"}), 0.5);
  // Integers 3, 4, 3: two of three equal the count 3.
  EXPECT_DOUBLE_EQ(count_score("I count 3, maybe 4, so 3", "3"), 2.0 / 3.0);
  EXPECT_EQ(count_score("no numbers", "3"), 0.0);
  EXPECT_EQ(retrieval_score("Paragraph 12", "Paragraph 12"), 1.0);
  EXPECT_DOUBLE_EQ(retrieval_score("12 or 7", "Paragraph 12"), 0.5);
  EXPECT_EQ(retrieval_score("3", "Page 7, Paragraph 3"), 1.0);  // the number after "Paragraph"
}

// The reference implementations' own scores (see the file header), to 1e-12.
TEST(Scorers, MatchTheReferenceImplementations) {
  std::ifstream in(std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/scorers/cases.json");
  ASSERT_TRUE(in) << "tests/fixtures/scorers/cases.json";
  const nlohmann::json doc = nlohmann::json::parse(in);
  ASSERT_GE(doc["cases"].size(), 450u);
  EXPECT_EQ(doc["sequence_matcher"], "difflib");
  std::map<std::string, int> checked;
  for (const auto& c : doc["cases"]) {
    const std::string metric = c["metric"], p = c["prediction"];
    const auto refs = c["references"].get<std::vector<std::string>>();
    SCOPED_TRACE(metric + ": " + c.dump());
    ++checked[metric];
    if (metric == "normalize_answer") {
      EXPECT_EQ(normalize_answer(p), c["expected"].get<std::string>());
      continue;
    }
    const double want = c["expected"];
    double got = -1;
    if (metric == "rouge_l") got = rouge_l(p, refs);
    if (metric == "token_f1") got = token_f1(p, refs);
    if (metric == "string_match_all") got = string_match_all(p, refs);
    if (metric == "string_match_part") got = string_match_part(p, refs);
    if (metric == "edit_similarity") got = edit_similarity(p, refs);
    if (metric == "classification")
      got = classification_score(p, refs.at(0), c["all_classes"].get<std::vector<std::string>>());
    if (metric == "count") got = count_score(p, refs.at(0));
    if (metric == "retrieval") got = retrieval_score(p, refs.at(0));
    if (metric == "sequence_ratio") got = sequence_ratio(p, refs.at(0));
    EXPECT_NEAR(got, want, 1e-12);
  }
  for (const char* metric :
       {"rouge_l", "token_f1", "normalize_answer", "string_match_all", "string_match_part",
        "edit_similarity", "classification", "sequence_ratio"})
    EXPECT_GE(checked[metric], 30) << metric;
}

}  // namespace
}  // namespace kvbench
