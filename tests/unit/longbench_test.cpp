// LongBench-format loading, prompt construction and per-dataset scoring on the sample file in
// tests/fixtures/longbench (our own texts), with scores worked out by hand.
#include <gtest/gtest.h>

#include <fstream>

#include "kvbench/core/error.h"
#include "kvbench/workloads/longbench.h"

namespace kvbench {
namespace {

const std::string kDir = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench";

const LongBenchRow& row_of(const std::vector<LongBenchRow>& rows, const std::string& dataset) {
  for (const auto& r : rows)
    if (r.dataset == dataset) return r;
  throw Error("no row for " + dataset);
}

TEST(LongBench, LoadsEveryFieldOfTheSampleFile) {
  const auto rows = load_longbench_jsonl(kDir + "/sample.jsonl");
  ASSERT_EQ(rows.size(), 7u);  // one row per metric family, plus a long qasper row
  const LongBenchRow& q = row_of(rows, "qasper");
  EXPECT_EQ(q.id, "lb-qasper-0");
  EXPECT_EQ(q.answers.size(), 2u);
  EXPECT_TRUE(q.all_classes.empty());  // null in the file
  EXPECT_EQ(q.length, 40);
  EXPECT_EQ(row_of(rows, "trec").all_classes.size(), 4u);
}

TEST(LongBench, PromptsFromTemplatesOrTheGenericOne) {
  const auto rows = load_longbench_jsonl(kDir + "/sample.jsonl");
  const auto templates = load_longbench_templates(kDir + "/config");
  LongBenchRow r = row_of(rows, "qasper");
  const std::string p = longbench_prompt(r, templates);
  EXPECT_EQ(p.rfind("Answer the question from the article", 0), 0u);
  EXPECT_NE(p.find("Article: " + r.context + "\n\nQuestion: " + r.input), std::string::npos);
  EXPECT_EQ(longbench_max_new_tokens(r, templates), 32);
  // No templates: context, blank line, input; 128 new tokens.
  EXPECT_EQ(longbench_prompt(r, std::nullopt), r.context + "\n\n" + r.input);
  EXPECT_EQ(longbench_max_new_tokens(r, std::nullopt), 128);
  // A placeholder inside the data is not substituted again.
  r.context = "see {input} here";
  EXPECT_EQ(longbench_prompt(r, std::nullopt), "see {input} here\n\n" + r.input);
  // LongBench-E datasets use their base dataset's template.
  r.dataset = "qasper_e";
  EXPECT_EQ(longbench_max_new_tokens(r, templates), 32);
}

TEST(LongBench, TruncatesInTheMiddle) {
  std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  EXPECT_EQ(truncate_middle(ids, 4), (std::vector<int32_t>{0, 1, 8, 9}));
  EXPECT_EQ(truncate_middle(ids, 5), (std::vector<int32_t>{0, 1, 8, 9}));  // int(5 / 2) per side
  EXPECT_EQ(truncate_middle(ids, 10), ids);
}

TEST(LongBench, ScoresEachDatasetWithItsMetric) {
  const auto rows = load_longbench_jsonl(kDir + "/sample.jsonl");
  // qa_f1: "Pell the owl" -> {pell, owl}; vs {grey, owl, named, pell}: P 1, R 1/2, F1 2/3;
  // vs {pell}: P 1/2, R 1, F1 2/3.
  EXPECT_NEAR(score_longbench(row_of(rows, "qasper"), "Pell the owl"), 2.0 / 3, 1e-12);
  // trec: only the first line counts, so the second class named does not halve the score.
  EXPECT_EQ(score_longbench(row_of(rows, "trec"), "Distance, linear measure\nIndividual"), 1.0);
  EXPECT_EQ(score_longbench(row_of(rows, "passage_count"), "There are 3 different paragraphs."),
            1.0);
  EXPECT_EQ(score_longbench(row_of(rows, "passage_count"), "3 or 4"), 0.5);
  EXPECT_EQ(score_longbench(row_of(rows, "passage_retrieval_en"), "Paragraph 2"), 1.0);
  EXPECT_EQ(score_longbench(row_of(rows, "lcc"), "    return 2 * (width + height)"), 1.0);
  const LongBenchRow& gov = row_of(rows, "gov_report");
  // The rouge package's F of a text with itself: 2 x 1 / (2 + 1e-8).
  EXPECT_DOUBLE_EQ(score_longbench(gov, gov.answers[0]), 2.0 * (1.0 / (2.0 + 1e-8)));
  EXPECT_EQ(longbench_metric("gov_report"), "rouge");
  EXPECT_EQ(longbench_metric("lcc_e"), "code_sim");
  // RULER's QA tasks take any reference; its others need all of them.
  EXPECT_EQ(longbench_metric("ruler:qa_1"), "string_match_part");
  EXPECT_EQ(longbench_metric("ruler:niah_multivalue"), "string_match_all");
  LongBenchRow qa;
  qa.dataset = "ruler:qa_2";
  qa.answers = {"Paris", "Paris, France"};
  EXPECT_EQ(score_longbench(qa, "It is Paris."), 1.0);
  qa.dataset = "ruler:niah_multivalue_2";
  EXPECT_EQ(score_longbench(qa, "It is Paris."), 0.5);
}

TEST(LongBench, BadInputIsAClearError) {
  const std::string path = ::testing::TempDir() + "/kvbench_lb_bad.jsonl";
  {
    std::ofstream f(path);
    f << R"({"_id": "a", "dataset": "qasper", "input": "q", "context": "c", "answers": ["x"]})"
      << "\n";
    f << R"({"_id": "b", "dataset": "qasper", "input": "q", "context": "c", "answers": "x"})"
      << "\n";
  }
  try {
    load_longbench_jsonl(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":2: \"answers\": expected a list of strings"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(longbench_metric("dureader"), Error);
  try {
    longbench_metric("narativeqa");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown LongBench dataset 'narativeqa'"),
              std::string::npos);
  }
}

// The error of loading a one-row file, "" when it loads.
std::string one_row_error(const std::string& name, const std::string& row) {
  const std::string path = ::testing::TempDir() + "/kvbench_lb_" + name + ".jsonl";
  std::ofstream(path) << row << "\n";
  try {
    load_longbench_jsonl(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Rows LongBench's scorer fails on are refused at load, naming the line and key, instead of
// scoring 0 for every cache; a `length` of another type is an error, not a row left unbucketed.
TEST(LongBench, RowsTheScorerCannotScoreAreRefused) {
  const std::string classes =
      one_row_error("trec", R"({"_id": "t", "dataset": "trec", "input": "q", "context": "c", )"
                            R"("answers": ["Location"], "all_classes": null})");
  EXPECT_NE(classes.find(":1: \"all_classes\""), std::string::npos) << classes;
  const std::string paragraph =
      one_row_error("retrieval", R"({"_id": "r", "dataset": "passage_retrieval_en", "input": "q", )"
                                 R"("context": "c", "answers": ["the second one"]})");
  EXPECT_NE(paragraph.find(":1: \"answers\""), std::string::npos) << paragraph;
  const std::string length =
      one_row_error("length", R"({"_id": "l", "dataset": "qasper", "input": "q", )"
                              R"("context": "c", "answers": ["x"], "length": "5120"})");
  EXPECT_NE(length.find(":1: \"length\""), std::string::npos) << length;
  EXPECT_EQ(one_row_error("length_null", R"({"_id": "l", "dataset": "qasper", "input": "q", )"
                                         R"("context": "c", "answers": ["x"], "length": null})"),
            "");
}

// passage_retrieval_zh needs no word segmenter: LongBench scores it by the number after 段落.
TEST(LongBench, PassageRetrievalZhIsScoredByItsParagraphNumber) {
  EXPECT_EQ(longbench_metric("passage_retrieval_zh"), "retrieval_zh");
  LongBenchRow r;
  r.dataset = "passage_retrieval_zh";
  r.answers = {"段落3"};
  EXPECT_EQ(score_longbench(r, "段落3"), 1.0);
  EXPECT_EQ(score_longbench(r, "答案是段落3，不是段落5"), 0.5);
  EXPECT_EQ(score_longbench(r, "Paragraph 3"), 1.0);  // the numbers in the output, as LongBench
  EXPECT_EQ(score_longbench(r, "无"), 0.0);
  EXPECT_THROW(longbench_metric("vcsum"), Error);  // jieba-segmented: still refused
}

TEST(LongBench, RulerRowsLoadAndScoreByStringMatchAll) {
  const std::string path = ::testing::TempDir() + "/kvbench_ruler.jsonl";
  {
    std::ofstream f(path);
    f << R"({"index": 7, "input": "What are the values?", "outputs": ["123", "456"], "length": 12})"
      << "\n";
  }
  const auto rows = load_ruler_jsonl(path, "niah_multivalue");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].id, "7");
  EXPECT_EQ(rows[0].dataset, "ruler:niah_multivalue");
  EXPECT_EQ(longbench_prompt(rows[0], std::nullopt), "What are the values?");  // the whole prompt
  EXPECT_EQ(score_longbench(rows[0], "The values are 456."), 0.5);
}

TEST(Ruler, TaskNamedAfterItsFile) {
  EXPECT_EQ(ruler_task_name("data/ruler/niah_multikey_2/validation.jsonl"), "niah_multikey_2");
  EXPECT_EQ(ruler_task_name("/x/vt/test.jsonl"), "vt");
  EXPECT_EQ(ruler_task_name("niah_single_1.jsonl"), "niah_single_1");
  EXPECT_EQ(ruler_task_name("validation.jsonl"), "validation");  // no folder to name it
  EXPECT_EQ(ruler_task_name("/x/qa_1.jsonl"), "qa_1");
}

TEST(LongBench, RulerAnswerPrefixIsAppendedAndEmptyOutputsRefused) {
  const std::string path = ::testing::TempDir() + "/kvbench_ruler_prefix.jsonl";
  {
    std::ofstream f(path);
    f << R"({"index": 0, "input": "Find the number. ", "answer_prefix": "The number is:",)"
      << R"( "outputs": ["42"]})"
      << "\n";
  }
  const auto rows = load_ruler_jsonl(path, "data");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(longbench_prompt(rows[0], std::nullopt), "Find the number. ");
  EXPECT_EQ(rows[0].answer_prefix, "The number is:");  // the accuracy suite appends it
  {
    std::ofstream f(path);
    f << R"({"index": 0, "input": "q", "outputs": []})"
      << "\n";
  }
  try {
    load_ruler_jsonl(path, "data");
    FAIL() << "a row without references must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":1: \"outputs\": empty"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kvbench
