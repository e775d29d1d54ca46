#include "kvbench/workloads/longbench.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/jsonl.h"
#include "kvbench/core/text.h"
#include "kvbench/workloads/scorers.h"

namespace kvbench {

using nlohmann::json;

namespace {

std::string string_field(const json& row, const char* key, const std::string& at) {
  if (!row.contains(key) || !row[key].is_string()) throw_field_error(row, key, "a string", at);
  return row[key];
}

std::vector<std::string> string_list(const json& row, const char* key, const std::string& at,
                                     bool required) {
  if (!row.contains(key) || row[key].is_null()) {
    if (required) throw_field_error(row, key, "a list of strings", at);
    return {};
  }
  if (!row[key].is_array()) throw_field_error(row, key, "a list of strings", at);
  std::vector<std::string> out;
  for (const auto& v : row[key]) {
    if (!v.is_string()) throw_field_error(row, key, "a list of strings", at);
    out.push_back(v);
  }
  return out;
}

// Calls fn(row, "file:line") for every non-blank line parsed as a JSON object; none is an error.
template <class Fn>
void for_each_jsonl(const std::string& path, Fn&& fn) {
  int64_t rows = 0;
  read_jsonl(path, [&](const json& row, int64_t line) {
    fn(row, jsonl_where(path, line));
    ++rows;
  });
  KVB_CHECK(rows > 0, path, ": no rows");
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  KVB_CHECK(in.good(), "cannot read ", path);
  try {
    return json::parse(in, json_depth_limit(path));
  } catch (const json::exception& e) {
    throw Error(path + ": not JSON (" + json_error_text(e) + ")");
  }
}

std::string first_line(const std::string& text) {
  const size_t start = text.find_first_not_of('\n');
  if (start == std::string::npos) return "";
  const size_t end = text.find('\n', start);
  return text.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

}  // namespace

std::string base_dataset(const std::string& dataset) {
  const std::string suffix = "_e";
  if (dataset.size() > suffix.size() && dataset.compare(dataset.size() - 2, 2, suffix) == 0)
    return dataset.substr(0, dataset.size() - 2);
  return dataset;
}

namespace {

// `length` when the row has one (null or absent: 0, none); any other type is an error, not a
// row quietly left out of the length buckets.
int64_t optional_length(const json& row, const std::string& at) {
  if (!row.contains("length") || row["length"].is_null()) return 0;
  if (!row["length"].is_number_integer()) throw_field_error(row, "length", "an integer", at);
  return row["length"].get<int64_t>();
}

// A row LongBench's scorer would fail on (it raises) is refused at load, not scored 0 for the
// method and the full cache alike: a classification row without classes, a retrieval reference
// without its paragraph number.
void check_scorable(const LongBenchRow& r, const std::string& at) {
  const std::string d = base_dataset(r.dataset);
  if (d == "trec" || d == "lsht")
    KVB_CHECK(!r.all_classes.empty(), at, ": \"all_classes\": ", d,
              " is scored by classification, which needs the class list");
  const std::string mark = d == "passage_retrieval_en"   ? "Paragraph "
                           : d == "passage_retrieval_zh" ? "段落"
                                                         : "";
  if (mark.empty()) return;
  for (const std::string& a : r.answers)
    KVB_CHECK(!paragraph_id(a, mark).empty(), at, ": \"answers\": \"", a, "\" names no \"", mark,
              "N\" (", d, " is scored by that paragraph number)");
}

}  // namespace

std::vector<LongBenchRow> load_longbench_jsonl(const std::string& path) {
  std::vector<LongBenchRow> rows;
  for_each_jsonl(path, [&](const json& row, const std::string& at) {
    LongBenchRow r;
    r.id = string_field(row, "_id", at);
    r.dataset = string_field(row, "dataset", at);
    r.input = string_field(row, "input", at);
    r.context = string_field(row, "context", at);
    r.answers = string_list(row, "answers", at, true);
    KVB_CHECK(!r.answers.empty(), at, ": \"answers\": empty");
    r.all_classes = string_list(row, "all_classes", at, false);
    r.length = optional_length(row, at);
    check_scorable(r, at);
    rows.push_back(std::move(r));
  });
  return rows;
}

std::vector<LongBenchRow> load_ruler_jsonl(const std::string& path, const std::string& task) {
  std::vector<LongBenchRow> rows;
  for_each_jsonl(path, [&](const json& row, const std::string& at) {
    LongBenchRow r;
    if (!row.contains("index") || !(row["index"].is_number_integer() || row["index"].is_string()))
      throw_field_error(row, "index", "an integer or a string", at);
    r.id = row["index"].is_string() ? row["index"].get<std::string>()
                                    : std::to_string(row["index"].get<int64_t>());
    r.dataset = "ruler:" + task;
    r.input = string_field(row, "input", at);
    if (row.contains("answer_prefix") && !row["answer_prefix"].is_null())
      r.answer_prefix = string_field(row, "answer_prefix", at);
    r.answers = string_list(row, "outputs", at, true);
    KVB_CHECK(!r.answers.empty(), at, ": \"outputs\": empty (a row needs a reference)");
    r.length = optional_length(row, at);
    rows.push_back(std::move(r));
  });
  return rows;
}

std::string ruler_task_name(const std::string& path) {
  const std::filesystem::path file(path);
  const std::string stem = file.stem().string();
  const std::string folder = file.parent_path().filename().string();
  if ((stem == "validation" || stem == "test") && !folder.empty() && folder != "." &&
      folder != "..")
    return folder;
  return stem;
}

LongBenchTemplates load_longbench_templates(const std::string& dir) {
  LongBenchTemplates t;
  const json prompts = read_json_file(dir + "/dataset2prompt.json");
  const json lengths = read_json_file(dir + "/dataset2maxlen.json");
  KVB_CHECK(prompts.is_object() && lengths.is_object(), dir,
            ": expected JSON objects keyed by dataset");
  for (const auto& [name, v] : prompts.items()) {
    KVB_CHECK(v.is_string(), dir, "/dataset2prompt.json: ", name, ": expected a string");
    t.prompt[name] = v;
  }
  for (const auto& [name, v] : lengths.items()) {
    KVB_CHECK(v.is_number_integer() && v.get<int64_t>() > 0, dir, "/dataset2maxlen.json: ", name,
              ": expected a positive integer");
    t.max_new_tokens[name] = v;
  }
  return t;
}

bool longbench_has_template(const LongBenchRow& row, const LongBenchTemplates& templates) {
  return row.dataset.rfind("ruler:", 0) == 0 || templates.prompt.count(base_dataset(row.dataset));
}

std::string longbench_prompt(const LongBenchRow& row,
                             const std::optional<LongBenchTemplates>& templates) {
  if (row.dataset.rfind("ruler:", 0) == 0) return row.input;  // RULER's input is the whole prompt
  std::string tpl = "{context}\n\n{input}";
  if (templates) {
    auto it = templates->prompt.find(base_dataset(row.dataset));
    if (it != templates->prompt.end()) tpl = it->second;
  }
  // One pass, so a context that itself contains "{input}" is left alone.
  std::string out;
  for (size_t i = 0; i < tpl.size();) {
    if (tpl.compare(i, 9, "{context}") == 0) {
      out += row.context, i += 9;
    } else if (tpl.compare(i, 7, "{input}") == 0) {
      out += row.input, i += 7;
    } else {
      out += tpl[i++];
    }
  }
  return out;
}

int64_t longbench_max_new_tokens(const LongBenchRow& row,
                                 const std::optional<LongBenchTemplates>& templates) {
  if (row.dataset.rfind("ruler:", 0) == 0) {
    // RULER's tokens_to_generate per task type (its synthetic constants); its string match
    // credits an answer anywhere in the output, so a longer cap would inflate the scores.
    const std::string task = row.dataset.substr(6);
    const auto starts = [&](const char* p) { return task.rfind(p, 0) == 0; };
    if (starts("vt") || starts("variable_tracking")) return 30;
    if (starts("cwe") || starts("common_words")) return 120;
    if (starts("fwe") || starts("freq_words")) return 50;
    if (starts("qa")) return 32;
    return 128;  // niah*, and names RULER does not use
  }
  if (templates) {
    auto it = templates->max_new_tokens.find(base_dataset(row.dataset));
    if (it != templates->max_new_tokens.end()) return it->second;
  }
  return 128;
}

bool longbench_takes_chat(const std::string& dataset) {
  static const std::set<std::string> raw = {"trec", "triviaqa", "samsum",
                                            "lsht", "lcc",      "repobench-p"};
  return raw.count(base_dataset(dataset)) == 0;
}

std::vector<int32_t> truncate_middle(const std::vector<int32_t>& ids, int64_t max_tokens) {
  KVB_CHECK(max_tokens >= 2, "truncate_middle: a limit of at least 2 tokens is needed");
  if (static_cast<int64_t>(ids.size()) <= max_tokens) return ids;
  const int64_t half = max_tokens / 2;
  std::vector<int32_t> out(ids.begin(), ids.begin() + half);
  out.insert(out.end(), ids.end() - half, ids.end());
  return out;
}

std::string longbench_metric(const std::string& dataset) {
  // RULER scores its QA tasks (qa_1, qa_2: task "qa") by any reference, the others by all.
  if (dataset.rfind("ruler:", 0) == 0)
    return dataset.rfind("ruler:qa", 0) == 0 ? "string_match_part" : "string_match_all";
  static const std::map<std::string, std::string> metric = {
      {"narrativeqa", "qa_f1"},
      {"qasper", "qa_f1"},
      {"multifieldqa_en", "qa_f1"},
      {"hotpotqa", "qa_f1"},
      {"2wikimqa", "qa_f1"},
      {"musique", "qa_f1"},
      {"triviaqa", "qa_f1"},
      {"gov_report", "rouge"},
      {"qmsum", "rouge"},
      {"multi_news", "rouge"},
      {"samsum", "rouge"},
      {"trec", "classification"},
      {"lsht", "classification"},
      {"passage_count", "count"},
      {"passage_retrieval_en", "retrieval"},
      {"lcc", "code_sim"},
      {"repobench-p", "code_sim"},
      {"passage_retrieval_zh", "retrieval_zh"}};
  // Their metrics segment Chinese words (jieba); passage_retrieval_zh's is a regex, kept.
  static const std::set<std::string> chinese = {"multifieldqa_zh", "dureader", "vcsum"};
  const std::string d = base_dataset(dataset);
  KVB_CHECK(!chinese.count(d), "LongBench dataset ", dataset,
            ": its metric needs Chinese word segmentation, which kvbench does not have");
  auto it = metric.find(d);
  if (it != metric.end()) return it->second;
  std::vector<std::string> known;
  for (const auto& [name, m] : metric) known.push_back(name);
  throw Error("unknown LongBench dataset '" + dataset + "'; known: " + join(known, ", "));
}

double score_longbench(const LongBenchRow& row, const std::string& output) {
  const std::string metric = longbench_metric(row.dataset);
  const std::string d = base_dataset(row.dataset);
  const std::string pred = (d == "trec" || d == "triviaqa" || d == "samsum" || d == "lsht")
                               ? first_line(output)
                               : output;
  if (metric == "qa_f1") return token_f1(pred, row.answers);
  if (metric == "rouge") return rouge_l(pred, row.answers);
  if (metric == "code_sim") return edit_similarity(pred, row.answers);
  if (metric == "string_match_all") return string_match_all(pred, row.answers);
  if (metric == "string_match_part") return string_match_part(pred, row.answers);
  double best = 0;
  for (const auto& a : row.answers) {
    double s = 0;
    if (metric == "classification") s = classification_score(pred, a, row.all_classes);
    if (metric == "count") s = count_score(pred, a);
    if (metric == "retrieval") s = retrieval_score(pred, a);
    if (metric == "retrieval_zh") s = retrieval_score(pred, a, "段落");
    best = std::max(best, s);
  }
  return best;
}

}  // namespace kvbench
