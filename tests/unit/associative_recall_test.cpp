#include <gtest/gtest.h>

#include <map>
#include <set>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/model/tiny_tokenizer.h"
#include "kvbench/workloads/associative_recall.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {
namespace {

Tokenizer tiny() { return Tokenizer::from_json(tiny_tokenizer_json(512), tiny_tokenizer_config()); }

struct Parsed {
  std::vector<std::pair<std::string, std::string>> list, recalls;
  std::string asked;
};

// Reads a prompt back: the list lines, the recall lines and the asked key.
Parsed parse(const std::string& prompt) {
  Parsed p;
  std::istringstream in(prompt);
  std::string line;
  std::getline(in, line);  // instruction
  bool recall = false;
  while (std::getline(in, line)) {
    if (line == "Recall:") {
      recall = true;
      continue;
    }
    const size_t space = line.find(' ');
    if (space == std::string::npos) {
      p.asked = line;  // the last line has no value
      continue;
    }
    (recall ? p.recalls : p.list).emplace_back(line.substr(0, space), line.substr(space + 1));
  }
  return p;
}

TEST(AssociativeRecall, ListRecallsAndTheAskedKeyAreConsistent) {
  const Tokenizer tok = tiny();
  for (double depth : {0.0, 0.3, 1.0}) {
    const TaskSample s = make_associative_recall(tok, {1024, depth, 11, 0.5});
    EXPECT_LE(s.prompt_tokens, 1024);
    EXPECT_GT(s.prompt_tokens, 1024 - 10);  // one more 9-byte line would not fit
    const Parsed p = parse(s.prompt);
    ASSERT_GT(p.list.size(), 40u);
    // About half the lines recall: as many as the list has other keys allow.
    EXPECT_NEAR(static_cast<double>(p.recalls.size()), static_cast<double>(p.list.size()), 2.0);
    std::map<std::string, std::string> value_of;
    std::set<std::string> values;
    for (const auto& [k, v] : p.list) {
      EXPECT_EQ(k.size(), 3u);
      EXPECT_EQ(v.size(), 4u);
      EXPECT_TRUE(value_of.emplace(k, v).second) << "duplicate key " << k;
      EXPECT_TRUE(values.insert(v).second) << "duplicate value " << v;
    }
    // Every recall line repeats a listed pair, each at most once, never the asked key.
    std::set<std::string> recalled;
    for (const auto& [k, v] : p.recalls) {
      ASSERT_TRUE(value_of.count(k)) << k;
      EXPECT_EQ(value_of[k], v);
      EXPECT_TRUE(recalled.insert(k).second);
      EXPECT_NE(k, p.asked);
    }
    ASSERT_TRUE(value_of.count(p.asked));
    EXPECT_EQ(s.answers, std::vector<std::string>{value_of[p.asked]});
    // The asked pair sits at the requested depth of the list.
    size_t index = 0;
    while (p.list[index].first != p.asked) ++index;
    EXPECT_NEAR(static_cast<double>(index) / static_cast<double>(p.list.size() - 1), depth, 0.02);
    EXPECT_NEAR(s.needle_depth, depth, 0.02);
  }
}

TEST(AssociativeRecall, AnswerDependsOnTheSeedOnlyAndBudgetsAreChecked) {
  const Tokenizer tok = tiny();
  const TaskSample a = make_associative_recall(tok, {600, 0.5, 3, 0.5});
  EXPECT_EQ(a.prompt, make_associative_recall(tok, {600, 0.5, 3, 0.5}).prompt);
  // The asked value is drawn first, so the prompt length does not change it.
  EXPECT_EQ(a.answers, make_associative_recall(tok, {1500, 0.2, 3, 0.5}).answers);
  EXPECT_NE(a.answers, make_associative_recall(tok, {600, 0.5, 4, 0.5}).answers);
  // Without recall lines the prompt is the list and the question.
  EXPECT_TRUE(parse(make_associative_recall(tok, {600, 0.5, 3, 0.0}).prompt).recalls.empty());
  EXPECT_THROW(make_associative_recall(tok, {20, 0.5, 3, 0.5}), Error);
  EXPECT_THROW(make_associative_recall(tok, {600, 1.5, 3, 0.5}), Error);
  EXPECT_THROW(make_associative_recall(tok, {600, 0.5, 3, 0.7}), Error);
}

TEST(AssociativeRecall, IsATaskOfTheFactoryScoredByTheFirstInteger) {
  const Tokenizer tok = tiny();
  const TaskSample s = make_task_sample("associative_recall", tok,
                                        {{"target_tokens", 400}, {"seed", 5}, {"depth", 0.5}}, "t");
  EXPECT_EQ(score_task_sample("associative_recall", " " + s.answers[0] + "\n", s), 1.0);
  EXPECT_EQ(score_task_sample("associative_recall", " 0000", s), 0.0);
  EXPECT_THROW(make_task_sample("associative_recall", tok, {{"recall_fraction", 0.9}}, "t"),
               ConfigError);
}

}  // namespace
}  // namespace kvbench
