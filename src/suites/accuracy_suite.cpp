#include "kvbench/suites/accuracy_suite.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/chat_format.h"
#include "kvbench/suites/workload.h"
#include "kvbench/workloads/longbench.h"
#include "kvbench/workloads/task_factory.h"

namespace kvbench {

using nlohmann::json;

namespace {

const std::vector<double> kThetaSweep = {0.01, 0.02, 0.04, 0.08, 0.16, 0.32};

std::vector<std::string> task_choices() {
  std::vector<std::string> c = {""};
  for (const auto& t : task_names()) c.push_back(t);
  return c;
}

}  // namespace

std::vector<ParamSpec> AccuracySuite::param_specs() {
  return {
      ParamSpec::string("task", "", "a synthetic task of the task factory (docs/workloads.md)",
                        task_choices()),
      ParamSpec::path("data_file", "", "a LongBench- or RULER-format JSONL file instead of a task"),
      ParamSpec::string("data_format", "longbench", "format of data_file", {"longbench", "ruler"}),
      ParamSpec::path("templates_dir", "",
                      "LongBench's config/ (dataset2prompt.json, dataset2maxlen.json); empty: "
                      "a generic template and 128 new tokens"),
      ParamSpec::integer("samples", 8,
                         "synthetic samples; for data files the first N rows (0: all)")
          .range(0, 1000000),
      ParamSpec::object("task_params",
                        "the task's own parameters (docs/workloads.md), e.g. {\"num_keys\": 8}; "
                        "target_tokens and seed are the suite's, depth fixes every sample's"),
      ParamSpec::integer("target_tokens", 1024,
                         "prompt length of synthetic samples, in model tokens")
          .range(16, 1 << 22),
      ParamSpec::integer("max_prompt_tokens", 0,
                         "data-file prompts longer than this are cut in the middle (0: cut to "
                         "fit the model's max_position_embeddings with the generation cap)")
          .range(0, 1 << 22),
      ParamSpec::integer("max_new_tokens", 0,
                         "generation cap (0: the task's or data set's default)")
          .range(0, 1 << 20),
      ParamSpec::string("chat_format", "",
                        "wrap each prompt as one user turn; auto: the format the model's "
                        "tokenizer_config.json chat_template renders",
                        {"", "auto", "llama3", "llama3.1", "chatml", "qwen2.5", "qwen3-nothink"}),
      ParamSpec::number("theta", 0.1, "negative samples: method <= (1 - theta) x full").range(0, 1),
      ParamSpec::string("threshold", "mean",
                        "negative samples: full reaches the task's mean or median",
                        {"mean", "median"}),
  };
}

std::vector<bool> negative_samples(const std::vector<std::string>& tasks,
                                   const std::vector<double>& full,
                                   const std::vector<double>& method, double theta,
                                   bool use_median) {
  KVB_CHECK(tasks.size() == full.size() && full.size() == method.size(),
            "negative_samples: sizes differ");
  std::map<std::string, std::vector<double>> by_task;
  for (size_t i = 0; i < tasks.size(); ++i) by_task[tasks[i]].push_back(full[i]);
  std::map<std::string, double> bar;
  for (const auto& [t, v] : by_task) bar[t] = use_median ? median(v) : mean(v);
  // Scores are sums of fractions: a mean of equal scores, or (1 - theta) x a score, can land an
  // ulp on the wrong side of a value that meets it exactly.
  const double slack = 1e-12;
  std::vector<bool> out(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i)
    out[i] = full[i] > 0 && full[i] >= bar[tasks[i]] - slack &&
             method[i] <= (1 - theta) * full[i] + slack;
  return out;
}

namespace {

struct Sample {
  std::string id, task;
  std::vector<int64_t> tokens;
  int64_t max_new_tokens = 64;
  std::optional<TaskSample> synthetic;
  nlohmann::json task_params;  // a synthetic sample's resolved task parameters (its depth, seed)
  std::optional<LongBenchRow> row;
};

// "auto": the built-in format matching <model.path>/tokenizer_config.json's chat_template.
std::string resolve_chat_format(const CellContext& ctx) {
  const std::string format = ctx.params["chat_format"];
  if (format != "auto") return format;
  const std::string path = ctx.spec.model.path + "/tokenizer_config.json";
  KVB_CHECK(!ctx.spec.model.path.empty(),
            "accuracy: chat_format auto needs model.path (a checkpoint with a "
            "tokenizer_config.json)");
  std::ifstream in(path);
  KVB_CHECK(in.good(), "accuracy: chat_format auto: cannot read ", path);
  json config;
  try {
    config = json::parse(in, json_depth_limit("accuracy: chat_format auto: " + path));
  } catch (const json::exception& e) {
    throw Error("accuracy: chat_format auto: " + path + ": not JSON");
  }
  std::string tpl;
  if (config.contains("chat_template") && config["chat_template"].is_string()) {
    tpl = config["chat_template"];
  } else if (config.contains("chat_template") && config["chat_template"].is_array()) {
    for (const auto& t : config["chat_template"])  // [{"name": "default", "template": ...}, ...]
      if (t.value("name", "") == "default" && t.contains("template")) tpl = t["template"];
  }
  KVB_CHECK(!tpl.empty(), "accuracy: chat_format auto: ", path, " has no chat_template");
  const std::string detected = detect_chat_format(tpl);
  KVB_CHECK(!detected.empty(), "accuracy: chat_format auto: the chat_template of ", path,
            " is none of the built-in formats (Llama 3, Llama 3.1, ChatML as Qwen3's, Qwen2.5); "
            "set chat_format to one of them only if it renders as that template does");
  return detected;
}

// McNemar's exact test of paired pass/fail scores ({only_full, only_method, p_value}); null
// unless every score of both sides is 0 or 1.
json pass_fail_mcnemar(const std::vector<double>& full, const std::vector<double>& method) {
  int64_t only_full = 0, only_method = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    if ((full[i] != 0 && full[i] != 1) || (method[i] != 0 && method[i] != 1)) return nullptr;
    only_full += full[i] == 1 && method[i] == 0;
    only_method += full[i] == 0 && method[i] == 1;
  }
  return {{"only_full", only_full},
          {"only_method", only_method},
          {"p_value", mcnemar_exact_p(only_full, only_method)}};
}

// Whether `text` is already rendered in the chat format (holds its turn-opening marker).
bool holds_chat_format(const std::string& format, const std::string& text) {
  const char* marker = format.rfind("llama3", 0) == 0 ? "<|start_header_id|>" : "<|im_start|>";
  return text.find(marker) != std::string::npos;
}

// `text` as the model reads it: wrapped as one user turn when `format` is set, then `suffix`
// (RULER's answer prefix, which opens the model's reply).
std::vector<int64_t> encode_prompt(const CellContext& ctx, const std::string& format,
                                   const std::string& text, const std::string& suffix = "") {
  const Tokenizer& tok = ctx.model.tokenizer();
  const std::vector<int32_t> ids =
      format.empty() ? tok.encode(text + suffix, true)
                     : tok.encode(render_chat(format, {{"user", text}}) + suffix, false);
  return {ids.begin(), ids.end()};
}

// A data-file row's prompt from its (cut) ids: as they are, or, to wrap it in `format` or add
// an answer prefix, back to text and encoded again. LongBench cuts the raw prompt, then wraps
// it: the cut ids back to text, special tokens kept (a templated RULER row holds its turns'
// markers), less the BOS the encode adds and the template's suffix (an add_eos_token
// tokenizer's EOS): an unwrapped prompt's encode adds it again at its end, and a chat-wrapped
// one is encoded without special tokens.
std::vector<int64_t> data_prompt(const CellContext& ctx, const Tokenizer& tok,
                                 std::vector<int32_t> body, const std::string& format,
                                 const std::string& answer_prefix) {
  if (format.empty() && answer_prefix.empty()) return {body.begin(), body.end()};
  const std::vector<int32_t>& head = tok.special_prefix();
  if (!head.empty() && body.size() >= head.size() &&
      std::equal(head.begin(), head.end(), body.begin()))
    body.erase(body.begin(), body.begin() + static_cast<std::ptrdiff_t>(head.size()));
  const std::vector<int32_t>& tail = tok.special_suffix();
  if (!tail.empty() && body.size() >= tail.size() &&
      std::equal(tail.begin(), tail.end(), body.end() - static_cast<std::ptrdiff_t>(tail.size())))
    body.resize(body.size() - tail.size());
  return encode_prompt(ctx, format, tok.decode(body, false), answer_prefix);
}

// The cell's samples, wrapped in `format` (resolve_chat_format's; "" for none).
std::vector<Sample> load_samples(const CellContext& ctx, const std::string& format,
                                 std::vector<std::string>& warnings) {
  const json& p = ctx.params;
  const std::string task = p["task"], file = p["data_file"];
  KVB_CHECK(task.empty() != file.empty(), "accuracy: give exactly one of task and data_file");
  const int64_t cap = p["max_new_tokens"], n = p["samples"];
  if (!format.empty()) check_chat_tokens(format, ctx.model.tokenizer());
  std::vector<Sample> out;
  if (!task.empty()) {
    KVB_CHECK(n > 0, "accuracy: samples must be at least 1 for a synthetic task");
    bool has_depth = false;
    for (const auto& s : task_param_specs(task)) has_depth |= s.name == "depth";
    bool cut_off = false;  // warned that the cap cuts answers off
    for (int64_t i = 0; i < n; ++i) {
      // Seeded by the run, not the cell: every method of the run sees the same samples, with
      // needles spread evenly over depths.
      json params = p["task_params"];
      params["target_tokens"] = p["target_tokens"];
      params["seed"] = ctx.spec.seed + static_cast<uint64_t>(i);
      if (has_depth && !params.contains("depth"))
        params["depth"] = (static_cast<double>(i) + 0.5) / static_cast<double>(n);
      Sample s;
      s.synthetic = make_task_sample(task, ctx.model.tokenizer(), params, "task_params");
      s.id = s.synthetic->id, s.task = task;
      s.task_params = resolve_task_params(task, params, "task_params", {});
      // RULER's answer prefix after the assistant's header when chat-wrapped (unwrapped, the
      // prompt's text is the same either way).
      const std::string& text = s.synthetic->prompt;
      const std::string& prefix = s.synthetic->answer_prefix;
      KVB_CHECK(text.size() >= prefix.size() &&
                    text.compare(text.size() - prefix.size(), prefix.size(), prefix) == 0,
                "accuracy: task ", task, "'s prompt does not end with its answer prefix");
      s.tokens = encode_prompt(ctx, format, text.substr(0, text.size() - prefix.size()), prefix);
      // Room for every answer (four UUIDs take ~100 Llama-3 tokens, a 100-hop chain 101 names),
      // or both caches are cut off and every score capped alike.
      const int64_t answer_tokens = static_cast<int64_t>(
          ctx.model.tokenizer().encode(join(s.synthetic->answers, ", "), false).size());
      s.max_new_tokens = cap > 0 ? cap : std::max<int64_t>(64, answer_tokens + 16);
      if (cap > 0 && cap < answer_tokens && !cut_off) {
        cut_off = true;
        warnings.push_back("max_new_tokens " + std::to_string(cap) + " is below the " +
                           std::to_string(answer_tokens) + " tokens of sample " + s.id +
                           "'s answers: its outputs are cut off and scored low with either "
                           "cache");
      }
      out.push_back(std::move(s));
    }
    return out;
  }
  std::vector<LongBenchRow> rows = p["data_format"] == "ruler"
                                       ? load_ruler_jsonl(file, ruler_task_name(file))
                                       : load_longbench_jsonl(file);
  std::optional<LongBenchTemplates> templates;
  if (!p["templates_dir"].get<std::string>().empty())
    templates = load_longbench_templates(p["templates_dir"]);
  if (n > 0 && static_cast<int64_t>(rows.size()) > n) rows.resize(static_cast<size_t>(n));
  const int64_t limit = p["max_prompt_tokens"];
  const Tokenizer& tok = ctx.model.tokenizer();
  const std::optional<int32_t> bos = tok.bos_id();
  const ModelConfig& c = ctx.model.get().config();
  std::set<std::string> untemplated;
  int64_t pre_wrapped = 0, cut_to_model = 0;
  for (auto& row : rows) {
    try {
      longbench_metric(row.dataset);  // unknown or unsupported data sets fail before generating
    } catch (const Error& e) {
      throw Error("accuracy: " + file + ": row '" + row.id + "': " + e.what());
    }
    if (templates && !longbench_has_template(row, *templates)) untemplated.insert(row.dataset);
    Sample s;
    s.id = row.id, s.task = row.dataset;
    s.max_new_tokens = cap > 0 ? cap : longbench_max_new_tokens(row, templates);
    const std::string prompt = longbench_prompt(row, templates);
    std::vector<int32_t> ids = tok.encode(prompt, true);
    // A RULER file prepared with the model's template starts with its BOS as text: one BOS.
    if (bos && ids.size() >= 2 && ids[0] == *bos && ids[1] == *bos) ids.erase(ids.begin());
    // LongBench feeds its few-shot and completion sets raw; a row already in the chat format
    // (RULER's default preparation) is not wrapped twice.
    bool wrap = !format.empty() && longbench_takes_chat(row.dataset);
    if (wrap && holds_chat_format(format, prompt)) wrap = false, ++pre_wrapped;
    const std::string wrapping = wrap ? format : "";
    s.tokens = data_prompt(ctx, tok, limit > 0 ? truncate_middle(ids, limit) : ids, wrapping,
                           row.answer_prefix);
    // No limit set: cut to the model's length less the generation, as LongBench's pred.py cuts
    // to each model's; a prompt past the trained positions scores what the model cannot read.
    // Wrapping re-encodes text, so the cut is retried on what is still over.
    const int64_t room = c.max_position_embeddings - s.max_new_tokens + 1;
    if (limit == 0 && c.max_position_embeddings > 0 &&
        static_cast<int64_t>(s.tokens.size()) > room) {
      int64_t keep = static_cast<int64_t>(ids.size());
      for (int tries = 0; tries < 4 && static_cast<int64_t>(s.tokens.size()) > room; ++tries) {
        keep = std::max<int64_t>(2, keep - (static_cast<int64_t>(s.tokens.size()) - room));
        s.tokens = data_prompt(ctx, tok, truncate_middle(ids, keep), wrapping, row.answer_prefix);
      }
      KVB_CHECK(static_cast<int64_t>(s.tokens.size()) <= room, "accuracy: ", file, ": row '",
                row.id, "': a generation cap of ", s.max_new_tokens, " tokens leaves ",
                std::max<int64_t>(room, 0), " of the model's max_position_embeddings (",
                c.max_position_embeddings, ") for the prompt, which still takes ", s.tokens.size(),
                " once cut (2 tokens of text at least, with its chat wrapper and answer "
                "prefix); lower max_new_tokens, or set max_prompt_tokens to feed it past the "
                "model's length");
      ++cut_to_model;
    }
    s.row = std::move(row);
    out.push_back(std::move(s));
  }
  if (pre_wrapped > 0) {
    warnings.push_back(std::to_string(pre_wrapped) +
                       " row(s) already hold the chat format's turn markers (a RULER file "
                       "prepared with the model's template) and were not wrapped again by "
                       "chat_format");
  }
  if (cut_to_model > 0) {
    warnings.push_back(std::to_string(cut_to_model) + " of " + std::to_string(out.size()) +
                       " prompts were cut in the middle to fit the model's "
                       "max_position_embeddings (" +
                       std::to_string(c.max_position_embeddings) +
                       ") with their generation cap (max_prompt_tokens 0)");
  }
  if (!untemplated.empty()) {
    warnings.push_back("templates_dir " + p["templates_dir"].get<std::string>() +
                       " has no prompt template for " +
                       join({untemplated.begin(), untemplated.end()}, ", ") +
                       ": those rows use the generic {context}\\n\\n{input} prompt");
  }
  return out;
}

struct Run {
  std::vector<int64_t> tokens;  // EOS excluded
  std::string stop, text;
  double ttft = 0, e2e = 0;
  uint64_t kv_bytes = 0;
  size_t generated = 0;  // tokens timed: EOS included (e2e ends with it)
  bool kept_all = true;  // every layer held every token at the peak (kept_every_token)
};

}  // namespace

std::vector<int64_t> longbench_extra_stop_ids(const std::string& dataset, const Tokenizer& tok) {
  if (base_dataset(dataset) != "samsum") return {};  // LongBench-E's samsum_e too
  const std::vector<int32_t> newline = tok.encode("\n");
  if (newline.empty()) return {};
  return {newline.back()};
}

namespace {

Run generate_one(const CellContext& ctx, KVCache& cache, const Sample& s) {
  const Transformer& model = ctx.model.get();
  GenerationConfig g;
  g.max_new_tokens = s.max_new_tokens;
  g.eos_token_ids = model.config().eos_token_ids;
  // LongBench's pred.py for samsum: a newline ends the output too, and the first token may be
  // neither it nor EOS (min_length one past the prompt).
  if (s.row) {
    const std::vector<int64_t> extra =
        longbench_extra_stop_ids(s.row->dataset, ctx.model.tokenizer());
    if (!extra.empty()) {
      g.eos_token_ids.insert(g.eos_token_ids.end(), extra.begin(), extra.end());
      g.first_token_suppressed = g.eos_token_ids;
    }
  }
  GenerationResult r = generate(model, cache, {s.tokens}, g);
  const SequenceResult& q = r.sequences.front();
  Run run{q.tokens,
          q.stop_reason,
          "",
          q.token_times_s.front(),
          q.token_times_s.back(),
          r.peak_storage.total(),
          q.tokens.size(),
          kept_every_token(r)};
  if (run.stop == "eos" && !run.tokens.empty()) run.tokens.pop_back();
  run.text = ctx.model.tokenizer().decode(
      std::vector<int32_t>(run.tokens.begin(), run.tokens.end()), true);
  return run;
}

double score(const Sample& s, const std::string& output) {
  return s.synthetic ? score_task_sample(s.task, output, *s.synthetic)
                     : score_longbench(*s.row, output);
}

// Tokens a chat wrapper adds around a prompt, estimated from its text (for auto, the largest
// built-in format's: Llama 3.1's and Qwen2.5's add a system turn); 0 without one.
int64_t chat_wrapper_tokens(const std::string& format, int64_t vocab_size) {
  if (format.empty()) return 0;
  size_t bytes = 0;
  for (const std::string& name : chat_format_names())
    if (format == "auto" || format == name)
      bytes = std::max(bytes, render_chat(name, {{"user", ""}}).size());
  return text_token_estimate(bytes, vocab_size);
}

// Estimates of a data file's longest prompt as the model reads it (text_token_estimate of its
// text, cut at max_prompt_tokens, plus the answer prefix and a chat wrapper) and longest
// generation cap, over the rows the run takes (the first `samples`); {0, 0} when the file
// cannot be read (the run says why).
std::pair<int64_t, int64_t> data_file_bounds(const json& p, const ModelConfig& c) {
  const int64_t vocab_size = c.vocab_size;
  try {
    const std::string file = p["data_file"];
    std::vector<LongBenchRow> rows = p["data_format"] == "ruler"
                                         ? load_ruler_jsonl(file, ruler_task_name(file))
                                         : load_longbench_jsonl(file);
    const int64_t n = p["samples"];
    if (n > 0 && static_cast<int64_t>(rows.size()) > n) rows.resize(static_cast<size_t>(n));
    std::optional<LongBenchTemplates> templates;
    if (!p["templates_dir"].get<std::string>().empty())
      templates = load_longbench_templates(p["templates_dir"]);
    const int64_t limit = p["max_prompt_tokens"];
    int64_t prompt = 0, cap = 0;
    const int64_t fixed_cap = p["max_new_tokens"];
    const int64_t wrapper = chat_wrapper_tokens(p["chat_format"], vocab_size);
    for (const LongBenchRow& row : rows) {
      int64_t body = text_token_estimate(longbench_prompt(row, templates).size(), vocab_size);
      if (limit > 0) body = std::min(body, limit);
      const int64_t row_cap = fixed_cap > 0 ? fixed_cap : longbench_max_new_tokens(row, templates);
      int64_t row_prompt =
          body + text_token_estimate(row.answer_prefix.size(), vocab_size) + wrapper;
      // Without a limit, the run cuts each prompt to the model's length with its cap.
      if (limit == 0 && c.max_position_embeddings > row_cap - 1)
        row_prompt = std::min(row_prompt, c.max_position_embeddings - row_cap + 1);
      prompt = std::max(prompt, row_prompt);
      cap = std::max(cap, row_cap);
    }
    return {prompt, cap};
  } catch (const Error&) {
    return {0, 0};
  }
}

}  // namespace

uint64_t AccuracySuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const ModelConfig& c = *ctx.model;
  const json& p = ctx.params;
  // A synthetic task's prompts are sized to target_tokens (its wrapper on top); a data file's
  // are what its rows hold.
  int64_t prompt = p["target_tokens"].get<int64_t>() +
                   std::max<int64_t>(32, chat_wrapper_tokens(p["chat_format"], c.vocab_size)),
          default_cap = 128;
  if (!p["data_file"].get<std::string>().empty()) {
    const auto [longest, longest_cap] = data_file_bounds(p, c);
    prompt = longest, default_cap = std::max<int64_t>(longest_cap, 1);
  }
  const int64_t cap =
      p["max_new_tokens"].get<int64_t>() > 0 ? p["max_new_tokens"].get<int64_t>() : default_cap;
  // One sample at a time, the baseline's cache (fp32 bound) charged beside the method's (a paged
  // one keeps its pool's pages), as the run's own check does.
  const double full_per_token = full_cache_bytes_per_token(c);
  return model_weight_bytes(c, ctx.weight_dtype) + ctx.shared_bytes +
         generation_bytes(c, ctx.kv_bytes_per_token_at(prompt + cap) + full_per_token, 1, prompt,
                          cap);
}

CellOutput AccuracySuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const Transformer& model = ctx.model.get();
  const ModelConfig& c = model.config();
  KVB_CHECK(!c.eos_token_ids.empty(),
            "accuracy: the model has no EOS token id; generation to EOS needs one");
  std::vector<std::string> load_warnings;
  const std::string format = resolve_chat_format(ctx);
  const std::vector<Sample> samples = load_samples(ctx, format, load_warnings);
  int64_t longest = 0, cap = 0;
  for (const auto& s : samples) {
    longest = std::max<int64_t>(longest, s.tokens.size());
    cap = std::max(cap, s.max_new_tokens);
  }
  // The baseline's cache is charged beside the method's: a paged one keeps its pool's pages.
  check_generation_fits(ctx, 1, longest, cap, "accuracy", 0, baseline_bytes_per_token(ctx));
  auto cache = make_cell_cache(ctx);
  auto full = make_baseline_cache(ctx);

  CellOutput out;
  out.warnings = load_warnings;
  std::vector<std::string> tasks;
  std::vector<double> s_full, s_method, diff;
  int64_t identical = 0;
  double agreement_sum = 0;
  bool kept_all = true;
  // The records time the method: its first sample must not pay for the process's first
  // generation on its cache (allocations, page faults, thread start-up, a policy's first
  // selection, which a prompt within its budget never makes). An untimed generation of the
  // first sample's prompt on each cache first (3 decode steps), as output_length's, and the
  // caches take turns going first.
  GenerationConfig warm;
  warm.max_new_tokens = 4;
  warm.ignore_eos = true;
  if (!samples.empty()) {
    generate(model, *full, {samples.front().tokens}, warm);
    generate(model, *cache, {samples.front().tokens}, warm);
  }
  ctx.progress.begin(ctx.cell_id, samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    Run base, run;
    if (i % 2 == 0) {
      base = generate_one(ctx, *full, s);
      run = generate_one(ctx, *cache, s);
    } else {
      run = generate_one(ctx, *cache, s);
      base = generate_one(ctx, *full, s);
    }
    kept_all = kept_all && run.kept_all;
    const double sf = score(s, base.text), sm = score(s, run.text);
    size_t first = 0;
    const size_t common = std::min(base.tokens.size(), run.tokens.size());
    while (first < common && base.tokens[first] == run.tokens[first]) ++first;
    const bool same = base.tokens == run.tokens;
    size_t equal = 0;
    for (size_t i = 0; i < common; ++i) equal += base.tokens[i] == run.tokens[i];
    const size_t longer = std::max<size_t>(std::max(base.tokens.size(), run.tokens.size()), 1);
    const double agreement = same ? 1.0 : static_cast<double>(equal) / static_cast<double>(longer);
    tasks.push_back(s.task);
    s_full.push_back(sf), s_method.push_back(sm), diff.push_back(sm - sf);
    identical += same;
    agreement_sum += agreement;
    out.records.push_back(
        {{"kind", "scored_sample"},
         {"id", s.id},
         {"task", s.task},
         {"prompt_hash", prompt_hash(s.tokens)},
         {"prompt_tokens", s.tokens.size()},
         {"max_new_tokens", s.max_new_tokens},
         {"samples_s", {run.e2e}},
         {"score", sm},
         {"score_full", sf},
         {"answers", s.synthetic ? s.synthetic->answers : s.row->answers},
         {"task_params", s.task_params},
         {"output", run.text},
         {"output_full", base.text},
         {"length", run.tokens.size()},
         {"length_full", base.tokens.size()},
         {"stop", run.stop},
         {"identical", same},
         {"first_divergence", same ? -1 : static_cast<int64_t>(first)},
         {"token_agreement", agreement},
         {"ttft_s", run.ttft},
         // Over every timed token: an EOS answer's e2e ends with the EOS.
         {"tpot_s", run.generated > 1 ? (run.e2e - run.ttft) / double(run.generated - 1) : 0.0},
         {"e2e_s", run.e2e},
         {"kv_bytes", run.kv_bytes}});
    ctx.progress.advance(s.id);
  }
  ctx.progress.end();

  const bool use_median = p["threshold"] == "median";
  const double theta = p["theta"];
  const std::vector<bool> negative = negative_samples(tasks, s_full, s_method, theta, use_median);
  json negative_ids = json::array();
  for (size_t i = 0; i < negative.size(); ++i) {
    out.records[i]["negative"] = static_cast<bool>(negative[i]);
    if (negative[i]) negative_ids.push_back(out.records[i]["id"]);
  }
  json sweep = json::array();
  for (double t : kThetaSweep) {
    const auto neg = negative_samples(tasks, s_full, s_method, t, use_median);
    sweep.push_back({{"theta", t}, {"negative", std::count(neg.begin(), neg.end(), true)}});
  }
  // Per task: means, and McNemar's test where every score is pass/fail.
  json per_task = json::object();
  std::map<std::string, std::vector<size_t>> members;
  for (size_t i = 0; i < tasks.size(); ++i) members[tasks[i]].push_back(i);
  double macro_method = 0, macro_full = 0;  // LongBench's average: the mean of the tasks' means
  for (const auto& [task, idx] : members) {
    std::vector<double> f, m;
    for (size_t i : idx) f.push_back(s_full[i]), m.push_back(s_method[i]);
    const json mcnemar = pass_fail_mcnemar(f, m);
    json t = {{"samples", idx.size()}, {"mean_score", mean(m)}, {"mean_score_full", mean(f)}};
    // The method's mean with its 95% interval: Wilson's for pass rates, else the bootstrap's,
    // which one sample would give as [x, x], certainty it does not have: none then.
    if (!mcnemar.is_null()) {
      const Interval own =
          wilson_interval(static_cast<int64_t>(std::count(m.begin(), m.end(), 1.0)),
                          static_cast<int64_t>(m.size()));
      t["mean_score_ci95"] = {own.low, own.high};
    } else if (m.size() >= 2) {
      const Interval own = bootstrap_mean_ci(m, 0.95, 2000, ctx.seed);
      t["mean_score_ci95"] = {own.low, own.high};
    } else {
      t["mean_score_ci95"] = nullptr;
    }
    macro_method += mean(m) / static_cast<double>(members.size());
    macro_full += mean(f) / static_cast<double>(members.size());
    if (!mcnemar.is_null()) t["mcnemar"] = mcnemar;
    // LongBench-E's buckets of its rows' length field (scorer_e: under 4000, under 8000, the
    // rest), where the task's rows carry one.
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> buckets;
    for (size_t i : idx) {
      if (!samples[i].row || samples[i].row->length <= 0 ||
          samples[i].row->dataset.rfind("ruler:", 0) == 0)  // (RULER's length: its tokens)
        continue;
      const int64_t n = samples[i].row->length;
      auto& b = buckets[n < 4000 ? "0-4k" : n < 8000 ? "4-8k" : "8k+"];
      b.first.push_back(s_method[i]), b.second.push_back(s_full[i]);
    }
    if (!buckets.empty()) {
      json by_length = json::object();
      for (const auto& [name, b] : buckets)
        by_length[name] = {{"samples", b.first.size()},
                           {"mean_score", mean(b.first)},
                           {"mean_score_full", mean(b.second)}};
      t["length_buckets"] = by_length;
    }
    per_task[task] = t;
    if (idx.size() < 30) {
      out.warnings.push_back(
          "task " + task + " has " + std::to_string(idx.size()) +
          " samples: its mean and its McNemar test say little (30 or more advised)");
    }
  }
  if (kept_all)
    if (std::string w = nothing_evicted_warning(ctx.method); !w.empty()) out.warnings.push_back(w);
  const Interval ci = bootstrap_mean_ci(diff, 0.95, 2000, ctx.seed);
  // Pass/fail scores throughout: McNemar's exact test over every sample. With few discordant
  // pairs the percentile bootstrap's interval is too narrow (4 of 30 samples passing only with
  // the full cache give about [-0.27, -0.03], where the exact p is 0.125): say so.
  const json overall_mcnemar = pass_fail_mcnemar(s_full, s_method);
  if (!overall_mcnemar.is_null() && diff.size() >= 2 && (ci.low > 0 || ci.high < 0) &&
      overall_mcnemar["p_value"].get<double>() >= 0.05) {
    out.warnings.push_back(
        "the score difference's bootstrap interval excludes 0 but McNemar's exact test does not "
        "reject (p = " +
        format_fixed(overall_mcnemar["p_value"].get<double>(), 3) + ", " +
        std::to_string(overall_mcnemar["only_full"].get<int64_t>() +
                       overall_mcnemar["only_method"].get<int64_t>()) +
        " discordant sample(s)): with so few samples that differ, the interval is too narrow; "
        "the difference is not shown");
  }
  out.summary = {
      {"samples", samples.size()},
      {"mean_score", mean(s_method)},
      {"mean_score_full", mean(s_full)},
      {"macro_mean_score", macro_method},
      {"macro_mean_score_full", macro_full},
      {"score_difference", mean(diff)},
      {"score_difference_ci95", diff.size() >= 2 ? json{ci.low, ci.high} : json()},
      {"mcnemar", overall_mcnemar},
      {"identical_outputs", static_cast<double>(identical) / static_cast<double>(samples.size())},
      {"token_agreement", agreement_sum / static_cast<double>(samples.size())},
      {"negative_samples", std::count(negative.begin(), negative.end(), true)},
      {"negative_ids", negative_ids},
      {"negative_rule", {{"theta", theta}, {"threshold", p["threshold"]}}},
      {"theta_sweep", sweep},
      {"tasks", per_task},
      {"failed_ids", json::array()}};
  for (size_t i = 0; i < samples.size(); ++i)
    if (s_method[i] == 0) out.summary["failed_ids"].push_back(out.records[i]["id"]);
  // The format the prompts were wrapped in: with auto, what the checkpoint's template gave
  // (the cell id holds only "auto").
  out.summary["chat_format"] = format;
  return out;
}

Table AccuracySuite::summary_table(const CellOutput& output) const {
  const json& s = output.summary;
  Table t;
  t.columns = {"task", "samples", "score", "full", "McNemar p"};
  for (const auto& [task, v] : s["tasks"].items()) {
    t.rows.push_back(
        {task, std::to_string(v["samples"].get<int64_t>()),
         format_fixed(v["mean_score"].get<double>(), 3),
         format_fixed(v["mean_score_full"].get<double>(), 3),
         v.contains("mcnemar") ? format_fixed(v["mcnemar"]["p_value"].get<double>(), 3) : "-"});
  }
  const json& ci = s["score_difference_ci95"];
  const std::string interval = ci.is_array() ? format_fixed(ci[0].get<double>(), 3) + " .. " +
                                                   format_fixed(ci[1].get<double>(), 3)
                                             : "- (one sample)";
  t.rows.push_back({"all (diff " + format_fixed(s["score_difference"].get<double>(), 3) +
                        ", 95% CI " + interval + ")",
                    std::to_string(s["samples"].get<int64_t>()),
                    format_fixed(s["mean_score"].get<double>(), 3),
                    format_fixed(s["mean_score_full"].get<double>(), 3), ""});
  // Under the table, not in the McNemar column the count would otherwise sit in.
  t.notes.push_back(std::to_string(s["negative_samples"].get<int64_t>()) +
                    " negative sample(s): the full cache reached the threshold and the method "
                    "scored at most (1 - theta) of it");
  return t;
}

}  // namespace kvbench
