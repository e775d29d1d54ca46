#include <gtest/gtest.h>

#include "kvbench/core/error.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/workloads/passkey.h"

namespace kvbench {
namespace {

Tokenizer tiny() { return Tokenizer::from_json(tiny_tokenizer_json(512), tiny_tokenizer_config()); }

TEST(Passkey, FillsTheTokenBudgetWithTheNeedleAtItsDepth) {
  const Tokenizer tok = tiny();
  for (double depth : {0.0, 0.25, 0.5, 1.0}) {
    TaskSample s = make_passkey(tok, {1500, depth, 7});
    EXPECT_LE(s.prompt_tokens, 1500);
    // One more filler sentence (~20-40 tokens here) would not fit.
    EXPECT_GT(s.prompt_tokens, 1400) << depth;
    ASSERT_EQ(s.answers.size(), 1u);
    const std::string& key = s.answers[0];
    EXPECT_EQ(key.size(), 5u);
    const size_t needle = s.prompt.find("The pass key is " + key + ".");
    ASSERT_NE(needle, std::string::npos);
    // The needle's character position tracks the requested depth.
    const double where = static_cast<double>(needle) / static_cast<double>(s.prompt.size());
    EXPECT_NEAR(where, depth, 0.08) << depth;
    EXPECT_NEAR(s.needle_depth, depth, 0.02);
    EXPECT_EQ(s.prompt.substr(s.prompt.size() - 37), "What is the pass key? The pass key is");
  }
}

TEST(Passkey, SeededAndRefusesImpossibleBudgets) {
  const Tokenizer tok = tiny();
  EXPECT_EQ(make_passkey(tok, {800, 0.5, 3}).prompt, make_passkey(tok, {800, 0.5, 3}).prompt);
  EXPECT_NE(make_passkey(tok, {800, 0.5, 3}).answers, make_passkey(tok, {800, 0.5, 4}).answers);
  EXPECT_THROW(make_passkey(tok, {20, 0.5, 3}), Error);
  EXPECT_THROW(make_passkey(tok, {800, 1.5, 3}), Error);
}

TEST(Passkey, ScoreIsTheFirstIntegerOfTheOutput) {
  EXPECT_EQ(passkey_score(" 12345. Remember it.", "12345"), 1.0);
  EXPECT_EQ(passkey_score("It is 12345", "12345"), 1.0);
  EXPECT_EQ(passkey_score("123456", "12345"), 0.0);
  EXPECT_EQ(passkey_score("54321 or 12345", "12345"), 0.0);
  EXPECT_EQ(passkey_score("no idea", "12345"), 0.0);
}

}  // namespace
}  // namespace kvbench
