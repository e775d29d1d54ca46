// LongBench's data format (THUDM/LongBench: one JSON object per line with input, context,
// answers, all_classes, length, dataset, _id), its prompt construction (a per-dataset template
// over {context} and {input}, prompts longer than the limit cut in the middle) and its
// per-dataset metrics (LongBench's dataset-to-metric table, the best answer counting). The data
// and the templates are the user's to supply: load_longbench_templates reads LongBench's own
// config/dataset2prompt.json and config/dataset2maxlen.json; without them a generic template
// is used. RULER's JSONL rows (index, input, outputs, length) load too.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvbench {

struct LongBenchRow {
  std::string id;       // "_id" (RULER: "index")
  std::string dataset;  // "narrativeqa", ... (RULER rows: the file's task name)
  std::string input, context;
  std::vector<std::string> answers;      // RULER: "outputs"
  std::vector<std::string> all_classes;  // classification tasks only
  int64_t length = 0;                    // the data set's own length field (words), 0 if absent
  // RULER: the answer's lead-in ("The special magic number for X is:") that RULER's prepare
  // step cuts off the input; it follows the prompt (after any chat wrapper), "" when absent.
  std::string answer_prefix;
};

// Every row of a LongBench-format JSONL file; a bad line throws Error naming file:line and key.
std::vector<LongBenchRow> load_longbench_jsonl(const std::string& path);
// RULER's format; `task` becomes each row's dataset as "ruler:<task>" (its scorer:
// string_match_part for the QA tasks, "qa*", string_match_all for the others).
std::vector<LongBenchRow> load_ruler_jsonl(const std::string& path, const std::string& task);
// The task a RULER file holds: RULER's prepare step writes <dir>/<task>/validation.jsonl
// (or test.jsonl), so such a file is named by its folder; any other by its stem
// ("niah_single_1.jsonl": niah_single_1).
std::string ruler_task_name(const std::string& path);

struct LongBenchTemplates {
  std::map<std::string, std::string> prompt;      // dataset -> template with {context}, {input}
  std::map<std::string, int64_t> max_new_tokens;  // dataset -> generation length
};
// Reads <dir>/dataset2prompt.json and <dir>/dataset2maxlen.json (LongBench's config/).
LongBenchTemplates load_longbench_templates(const std::string& dir);

// The prompt text: the dataset's template (or "{context}\n\n{input}" when `templates` has none
// for it, or is absent) with {context} and {input} substituted; a RULER row's input as it is.
std::string longbench_prompt(const LongBenchRow& row,
                             const std::optional<LongBenchTemplates>& templates);
// Whether `templates` has a prompt template for the row's dataset ("_e" suffix ignored); RULER
// rows need none.
bool longbench_has_template(const LongBenchRow& row, const LongBenchTemplates& templates);
// The dataset's generation length (128 when unknown). A RULER row's is RULER's for its task
// type, by the task's name: niah* 128, vt 30, cwe 120, fwe 50, qa* 32 (128 for other names).
int64_t longbench_max_new_tokens(const LongBenchRow& row,
                                 const std::optional<LongBenchTemplates>& templates);
// The LongBench set a row's dataset names: LongBench-E's "qasper_e" is "qasper".
std::string base_dataset(const std::string& dataset);
// Whether LongBench's pred.py wraps the dataset's prompt in the chat template: all but the
// few-shot and completion sets (trec, triviaqa, samsum, lsht, lcc, repobench-p), which it feeds
// raw. RULER rows: yes.
bool longbench_takes_chat(const std::string& dataset);
// LongBench's truncation: at most `max_tokens` ids, keeping the first and last halves.
std::vector<int32_t> truncate_middle(const std::vector<int32_t>& ids, int64_t max_tokens);

// LongBench's metric of `dataset` ("qa_f1", "rouge", "classification", "retrieval", "count",
// "code_sim"; RULER rows: "string_match_part" for "ruler:qa*", else "string_match_all"); the
// LongBench-E "_e" suffix is ignored. Throws Error for unknown datasets and for the Chinese ones
// (their metrics need a word segmenter).
std::string longbench_metric(const std::string& dataset);
// The row's score of `output` in [0, 1], as LongBench scores it: for trec, triviaqa, samsum and
// lsht only the first line of the output counts; the best answer counts.
double score_longbench(const LongBenchRow& row, const std::string& output);

}  // namespace kvbench
