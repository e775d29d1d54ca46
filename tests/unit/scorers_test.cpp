// Every scorer on worked examples computed by hand.
#include <gtest/gtest.h>

#include "kvbench/workloads/scorers.h"

namespace kvbench {
namespace {

TEST(Scorers, NormalizeAnswerAsLongBench) {
  EXPECT_EQ(normalize_answer("  The Eiffel-Tower, in PARIS!  "), "eiffeltower in paris");
  EXPECT_EQ(normalize_answer("an apple a day"), "apple day");
  EXPECT_EQ(normalized_tokens("A cat, the dog."), (std::vector<std::string>{"cat", "dog"}));
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
  // LCS "the cat on the mat" = 5 of 6 tokens each: P = R = 5/6, F = 5/6.
  EXPECT_NEAR(rouge_l("the cat sat on the mat", {"the cat is on the mat"}), 5.0 / 6.0, 1e-12);
  // "a b c" vs "a b c d e": LCS 3, P = 1, R = 0.6, beta^2 = (1/0.6)^2 = 25/9,
  // F = (1 + 25/9) * 0.6 / (0.6 + 25/9) = (34/9 * 0.6) / (0.6 + 25/9) = 2.2667 / 3.3778.
  EXPECT_NEAR(rouge_l("a b c", {"a b c d e"}), (34.0 / 9 * 0.6) / (0.6 + 25.0 / 9), 1e-12);
  EXPECT_EQ(rouge_l("x y", {"z"}), 0.0);
}

TEST(Scorers, EditSimilarity) {
  // kitten / sitting: LCS "ittn" = 4, indel distance 6 + 7 - 8 = 5, ratio 1 - 5/13 = 8/13.
  EXPECT_NEAR(levenshtein_ratio("kitten", "sitting"), 8.0 / 13.0, 1e-12);
  EXPECT_EQ(levenshtein_ratio("abc", "abc"), 1.0);
  EXPECT_EQ(levenshtein_ratio("", ""), 1.0);
  // Code fences and comments are skipped: the first real line is compared.
  EXPECT_EQ(edit_similarity("```python\n# comment\nreturn x + 1\nmore", {"return x + 1"}), 1.0);
}

TEST(Scorers, ClassificationCountRetrieval) {
  const std::vector<std::string> classes = {"location", "location city", "person"};
  // "location city" named; "location" is only part of it, so not a separate answer: 1/1.
  EXPECT_EQ(classification_score("Answer: location city", "location city", classes), 1.0);
  // Two different classes named: 1/2.
  EXPECT_EQ(classification_score("person or location city", "location city", classes), 0.5);
  EXPECT_EQ(classification_score("person", "location city", classes), 0.0);
  // Integers 3, 4, 3: two of three equal the count 3.
  EXPECT_DOUBLE_EQ(count_score("I count 3, maybe 4, so 3", "3"), 2.0 / 3.0);
  EXPECT_EQ(count_score("no numbers", "3"), 0.0);
  EXPECT_EQ(retrieval_score("Paragraph 12", "Paragraph 12"), 1.0);
  EXPECT_DOUBLE_EQ(retrieval_score("12 or 7", "Paragraph 12"), 0.5);
}

}  // namespace
}  // namespace kvbench
