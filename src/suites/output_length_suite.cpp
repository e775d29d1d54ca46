#include "kvbench/suites/output_length_suite.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/core/jsonl.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> OutputLengthSuite::param_specs() {
  return {
      ParamSpec::string_list("prompt_texts", json::array(),
                             "prompts as text, tokenized with the model's tokenizer"),
      ParamSpec::path(
          "prompts_file", "",
          "JSONL file, one {\"prompt\": text, \"id\": optional, \"task\": optional} per line"),
      ParamSpec::integer("samples", 8, "seeded random-id prompts when no texts are given")
          .range(1, 100000),
      ParamSpec::integer("prompt_tokens", 64, "length of the random-id prompts").range(1, 1 << 20),
      ParamSpec::integer("max_new_tokens", 256, "cap; reaching it without EOS is a runaway")
          .range(1, 1 << 20),
      ParamSpec::number("temperature", 1.0,
                        "sampling temperature of the full and method runs "
                        "(0: greedy)")
          .range(0, 100),
      ParamSpec::number("top_p", 1.0, "nucleus sampling threshold").range(1e-6, 1),
      ParamSpec::number_list("control_temperatures", json::array({0.9, 1.1}),
                             "full-cache runs at these temperatures: how far lengths move with "
                             "the temperature ([] for none)")
          .range(0, 100),
      ParamSpec::integer("control_seeds", 1,
                         "full-cache runs at the run's temperature with other sampling seeds: "
                         "the noise floor of length shifts (0 for none)")
          .range(0, 16),
  };
}

namespace {
// The paired-bootstrap 95% interval of sum(other) / sum(base): pairs drawn whole.
Interval ratio_of_sums_ci(const std::vector<double>& base, const std::vector<double>& other) {
  return bootstrap_paired_ci(base.size(), [&](const std::vector<size_t>& draw) {
    double sum_base = 0, sum_other = 0;
    for (size_t i : draw) {
      sum_base += base[i];
      sum_other += other[i];
    }
    return sum_other / sum_base;
  });
}
}  // namespace

LengthShift length_shift(const std::vector<double>& base, const std::vector<double>& other) {
  KVB_CHECK(base.size() == other.size() && !base.empty(), "length_shift: samples do not pair up");
  LengthShift s;
  s.samples = base.size();
  std::vector<double> d;
  for (size_t i = 0; i < base.size(); ++i) {
    d.push_back((base[i] - other[i]) / base[i] * 100.0);
    s.share_longer_50 += d.back() <= -50.0;
    s.share_shorter_50 += d.back() >= 50.0;
  }
  const double n = static_cast<double>(base.size());
  s.share_longer_50 /= n;
  s.share_shorter_50 /= n;
  s.mean_baseline = mean(base);
  s.mean_other = mean(other);
  s.d_mean = mean(d);
  s.d_median = median(d);
  const KsResult ks = ks_two_sample(base, other);
  s.ks_statistic = ks.statistic;
  s.ks_p_value = ks.p_value;
  s.wasserstein = wasserstein_1(base, other);
  const WilcoxonResult w = wilcoxon_signed_rank(base, other);
  s.pairs_differing = w.nonzero;
  s.wilcoxon_statistic = w.statistic;
  s.wilcoxon_p_value = w.p_value;
  s.d_mean_ci95 = bootstrap_mean_ci(d);
  s.length_ratio_ci95 = ratio_of_sums_ci(base, other);
  return s;
}

namespace {
// An interval as [low, high], or null below 2 samples: one sample's resamples all repeat it,
// which would read as certainty.
json interval_json(const Interval& ci, size_t samples) {
  return samples >= 2 ? json::array({ci.low, ci.high}) : json();
}
}  // namespace

json to_json(const LengthShift& s) {
  return {{"mean_length_baseline", s.mean_baseline},
          {"mean_length", s.mean_other},
          {"length_ratio", s.mean_other / s.mean_baseline},
          {"d_mean", s.d_mean},
          {"d_median", s.d_median},
          {"share_longer_50", s.share_longer_50},
          {"share_shorter_50", s.share_shorter_50},
          {"ks_statistic", s.ks_statistic},
          {"ks_p_value", s.ks_p_value},
          {"wasserstein", s.wasserstein},
          {"pairs_differing", s.pairs_differing},
          {"wilcoxon_statistic", s.wilcoxon_statistic},
          {"wilcoxon_p_value", s.wilcoxon_p_value},
          {"d_mean_ci95", interval_json(s.d_mean_ci95, s.samples)},
          {"length_ratio_ci95", interval_json(s.length_ratio_ci95, s.samples)}};
}

namespace {

struct Prompt {
  std::string id;
  std::vector<int64_t> tokens;
  std::string task;  // the JSONL row's "task", "" when none
};

std::vector<Prompt> load_prompts(const CellContext& ctx) {
  const json& p = ctx.params;
  const std::string file = p["prompts_file"];
  KVB_CHECK(file.empty() || p["prompt_texts"].empty(),
            "output_length: give prompt_texts or prompts_file, not both");
  struct Text {
    std::string id, text, task;
  };
  std::vector<Text> texts;
  for (size_t i = 0; i < p["prompt_texts"].size(); ++i)
    texts.push_back({"text-" + std::to_string(i), p["prompt_texts"][i].get<std::string>(), ""});
  if (!file.empty()) {
    read_jsonl(
        file,
        [&](const json& row, int64_t n) {
          const std::string at = "output_length: prompts_file: " + jsonl_where(file, n);
          if (!row.contains("prompt") || !row["prompt"].is_string())
            throw_field_error(row, "prompt", "a string", at);
          if (row.contains("task") && !row["task"].is_string())
            throw_field_error(row, "task", "a string", at);
          // A string id as it is ("q1", not "\"q1\""); a number as its JSON text.
          const std::string id = !row.contains("id")     ? "line-" + std::to_string(n)
                                 : row["id"].is_string() ? row["id"].get<std::string>()
                                                         : row["id"].dump();
          texts.push_back({id, row["prompt"], row.value("task", "")});
        },
        "output_length: prompts_file");
    KVB_CHECK(!texts.empty(), "output_length: ", file, " holds no prompts");
  }
  const int64_t vocab = ctx.model.get().config().vocab_size;
  std::vector<Prompt> prompts;
  if (texts.empty()) {
    // Seeded by the run, not the cell: every method of the run sees the same prompts.
    auto ids = synthetic_prompts(p["samples"], p["prompt_tokens"], vocab, ctx.spec.seed);
    for (size_t i = 0; i < ids.size(); ++i)
      prompts.push_back({"random-" + std::to_string(i), ids[i], ""});
    return prompts;
  }
  for (const auto& [id, text, task] : texts) {
    Prompt pr{id, {}, task};
    for (int32_t t : ctx.model.tokenizer().encode(text, true)) {
      KVB_CHECK(t < vocab, "output_length: the tokenizer gave id ", t, " beyond the vocabulary of ",
                vocab);
      pr.tokens.push_back(t);
    }
    KVB_CHECK(!pr.tokens.empty(), "output_length: prompt ", id, " encodes to no tokens");
    prompts.push_back(std::move(pr));
  }
  return prompts;
}

// One request's outcome.
struct Run {
  std::vector<int64_t> tokens;
  std::string stop;
  double ttft = 0, e2e = 0;
  std::vector<double> token_times;  // since the request started, one per token
  uint64_t kv_bytes = 0;
  bool kept_all = true;  // every layer held every token at the peak (kept_every_token)
  double length() const { return static_cast<double>(tokens.size()); }
  // Mean gap after the first token; 0 for a one-token run.
  double tpot() const { return tokens.size() > 1 ? (e2e - ttft) / (length() - 1) : 0.0; }
  // Mean gap over its first `n` (>= 2) tokens: a longer run's later steps attend more context.
  double tpot_over(size_t n) const {
    return (token_times[n - 1] - token_times[0]) / static_cast<double>(n - 1);
  }
};

Run generate_one(const Transformer& model, KVCache& cache, const std::vector<int64_t>& prompt,
                 const GenerationConfig& g) {
  GenerationResult r = generate(model, cache, {prompt}, g);
  const SequenceResult& s = r.sequences.front();
  return {s.tokens,        s.stop_reason,          s.token_times_s.front(), s.token_times_s.back(),
          s.token_times_s, r.peak_storage.total(), kept_every_token(r)};
}

// The length-shift table's rows: per task (the prompts' "task", "" for prompts without one),
// mean and median length with the full cache and with the method, their ratios, and D.
json length_shift_by_task(const std::vector<Prompt>& prompts, const std::vector<double>& full,
                          const std::vector<double>& method) {
  std::vector<std::string> order;
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> by;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!by.count(prompts[i].task)) order.push_back(prompts[i].task);
    by[prompts[i].task].first.push_back(full[i]);
    by[prompts[i].task].second.push_back(method[i]);
  }
  json out = json::array();
  for (const std::string& task : order) {
    const auto& [f, m] = by[task];
    const LengthShift s = length_shift(f, m);
    out.push_back({{"task", task},
                   {"samples", f.size()},
                   {"mean_length_baseline", s.mean_baseline},
                   {"mean_length", s.mean_other},
                   {"length_ratio", s.mean_other / s.mean_baseline},
                   {"median_length_baseline", median(f)},
                   {"median_length", median(m)},
                   {"median_length_ratio", median(m) / median(f)},
                   {"length_ratio_ci95", interval_json(s.length_ratio_ci95, s.samples)},
                   {"d_mean", s.d_mean},
                   {"d_mean_ci95", interval_json(s.d_mean_ci95, s.samples)},
                   {"d_median", s.d_median},
                   {"share_longer_50", s.share_longer_50},
                   {"share_shorter_50", s.share_shorter_50},
                   {"wilcoxon_p_value", s.wilcoxon_p_value}});
  }
  return out;
}

}  // namespace

namespace {

// The tokens of the longest text prompt as plans size them (text_token_estimate). 0 without
// text prompts; a prompts file that cannot be read counts 0 here (the run reports why).
int64_t text_prompt_tokens(const json& p, int64_t vocab_size) {
  size_t longest = 0;
  bool any = false;
  for (const auto& t : p["prompt_texts"]) {
    longest = std::max(longest, t.get<std::string>().size());
    any = true;
  }
  const std::string file = p["prompts_file"];
  if (!file.empty()) {
    try {
      read_jsonl(file, [&](const json& row, int64_t) {
        if (!row.contains("prompt") || !row["prompt"].is_string()) return;
        longest = std::max(longest, row["prompt"].get_ref<const std::string&>().size());
        any = true;
      });
    } catch (const Error&) {
    }
  }
  return any ? text_token_estimate(longest, vocab_size) : 0;
}

// The sampling seed of a sample's k-th seed control (k >= 1): far from every sample's own seed
// (those are consecutive), so no control replays another sample's draws.
uint64_t control_seed(uint64_t sample_seed, int64_t k) {
  return sample_seed ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(k));
}

}  // namespace

uint64_t OutputLengthSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const ModelConfig& c = *ctx.model;
  // Text prompts are as long as they are; prompt_tokens sizes only the random-id ones.
  const int64_t text = text_prompt_tokens(ctx.params, ctx.model->vocab_size);
  const int64_t prompt = text > 0 ? text : ctx.params["prompt_tokens"].get<int64_t>();
  const int64_t cap = ctx.params["max_new_tokens"];
  const double full_per_token = full_cache_bytes_per_token(c);
  // One request at a time, the baseline's cache (fp32 bound) charged beside the method's (a
  // paged one keeps its pool's pages), as the run's own check does.
  return model_weight_bytes(c, ctx.weight_dtype) + ctx.shared_bytes +
         generation_bytes(c, ctx.kv_bytes_per_token_at(prompt + cap) + full_per_token, 1, prompt,
                          cap);
}

CellOutput OutputLengthSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const Transformer& model = ctx.model.get();
  const ModelConfig& c = model.config();
  KVB_CHECK(!c.eos_token_ids.empty(),
            "output_length: the model has no EOS token id (config.json "
            "or generation_config.json eos_token_id); lengths need one");
  const std::vector<Prompt> prompts = load_prompts(ctx);
  int64_t longest = 0;
  for (const auto& pr : prompts) longest = std::max<int64_t>(longest, pr.tokens.size());
  // The baseline's cache is charged beside the method's: a paged one keeps its pool's pages.
  check_generation_fits(ctx, 1, longest, p["max_new_tokens"], "output_length", 0,
                        baseline_bytes_per_token(ctx));

  auto cache = make_cell_cache(ctx);
  auto full = make_baseline_cache(ctx);
  GenerationConfig g;
  g.max_new_tokens = p["max_new_tokens"];
  g.eos_token_ids = c.eos_token_ids;
  g.ignore_eos = false;
  g.sampling.temperature = p["temperature"];
  g.sampling.top_p = p["top_p"];
  std::vector<double> controls = p["control_temperatures"].get<std::vector<double>>();
  int64_t seed_controls = p["control_seeds"];

  CellOutput out;
  if (g.sampling.temperature == 0 && (!controls.empty() || seed_controls > 0)) {
    // Greedy lengths do not move with the seed: the floor is zero, and a sampled run against
    // greedy decoding measures sampling, which is no floor for a greedy method.
    controls.clear();
    seed_controls = 0;
    out.warnings.push_back(
        "temperature 0: greedy decoding has no sampling noise, so every length shift is the "
        "method's (up to numerical nondeterminism); the control runs (control_temperatures, "
        "control_seeds) would measure sampling against greedy decoding, not a noise floor, and "
        "were skipped");
  }
  // A control at the run's own temperature repeats the full-cache run exactly (same seed):
  // a ratio of 1 that says nothing about temperature.
  // (Compared at 2 decimals, as the rows and record keys name them.)
  const size_t listed = controls.size();
  const std::string own = format_fixed(g.sampling.temperature, 2);
  controls.erase(std::remove_if(controls.begin(), controls.end(),
                                [&](double t) { return format_fixed(t, 2) == own; }),
                 controls.end());
  if (controls.size() < listed)
    out.warnings.push_back("control_temperatures: " + own +
                           " is the run's temperature: its control would repeat the full-cache "
                           "run (same seed), so it was skipped");
  std::vector<double> len_full, len_method, e2e_full, e2e_method, tpot_full, tpot_method;
  std::vector<std::vector<double>> len_control(controls.size()), len_seed(seed_controls);
  int64_t runaway_full = 0, runaway_method = 0;
  const bool have_text =
      !p["prompt_texts"].empty() || !p["prompts_file"].get<std::string>().empty();
  // e2e_ratio compares the two caches' times: neither may pay for the process's first
  // generation (allocations, page faults: 1.5-3x a warm one on the tiny model), so each cache
  // generates a few untimed tokens first, and the caches take turns going first.
  GenerationConfig warm = g;
  warm.max_new_tokens = std::min<int64_t>(g.max_new_tokens, 4);
  warm.ignore_eos = true;  // an EOS first would leave the decode path cold
  generate_one(model, *full, prompts.front().tokens, warm);
  generate_one(model, *cache, prompts.front().tokens, warm);
  bool kept_all = true;
  ctx.progress.begin(ctx.cell_id, prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Prompt& pr = prompts[i];
    // The same sampling seed for every run of a sample: differences come from the cache.
    g.sampling.seed = ctx.spec.seed * 1000003ull + i;
    Run base, run;
    if (i % 2 == 0) {
      base = generate_one(model, *full, pr.tokens, g);
      run = generate_one(model, *cache, pr.tokens, g);
    } else {
      run = generate_one(model, *cache, pr.tokens, g);
      base = generate_one(model, *full, pr.tokens, g);
    }
    kept_all = kept_all && run.kept_all;
    json control_lengths = json::object();
    for (size_t k = 0; k < controls.size(); ++k) {
      GenerationConfig gc = g;
      gc.sampling.temperature = controls[k];
      const Run r = generate_one(model, *full, pr.tokens, gc);
      len_control[k].push_back(r.length());
      control_lengths[format_fixed(controls[k], 2)] = r.length();
    }
    json seed_lengths = json::array();
    for (int64_t k = 0; k < seed_controls; ++k) {
      GenerationConfig gs = g;
      gs.sampling.seed = control_seed(g.sampling.seed, k + 1);
      const Run r = generate_one(model, *full, pr.tokens, gs);
      len_seed[k].push_back(r.length());
      seed_lengths.push_back(r.length());
    }
    len_full.push_back(base.length());
    len_method.push_back(run.length());
    e2e_full.push_back(base.e2e);
    e2e_method.push_back(run.e2e);
    // The per-token speed at equal lengths: each run's mean gap over the tokens both made
    // (a longer run's later steps attend more context, which is the length's cost, not the
    // method's speed), over the pairs where both made more than one token.
    if (const size_t both = std::min(base.tokens.size(), run.tokens.size()); both > 1) {
      tpot_full.push_back(base.tpot_over(both));
      tpot_method.push_back(run.tpot_over(both));
    }
    runaway_full += base.stop == "length";
    runaway_method += run.stop == "length";
    json rec = {{"kind", "sample"},
                {"id", pr.id},
                {"task", pr.task},
                {"prompt_hash", prompt_hash(pr.tokens)},
                {"prompt_tokens", pr.tokens.size()},
                {"samples_s", {run.e2e}},
                {"length_full", base.length()},
                {"length", run.length()},
                {"d", (base.length() - run.length()) / base.length() * 100.0},
                {"stop_full", base.stop},
                {"stop", run.stop},
                {"lengths_control", control_lengths},
                {"lengths_seed_control", seed_lengths},
                {"ttft_s", run.ttft},
                {"tpot_s", run.tpot()},
                {"e2e_s", run.e2e},
                {"ttft_full_s", base.ttft},
                {"tpot_full_s", base.tpot()},
                {"e2e_full_s", base.e2e},
                {"kv_bytes", run.kv_bytes},
                {"kv_bytes_full", base.kv_bytes}};
    if (have_text) {
      // The text as the accuracy suite records it: the EOS that ended it (counted in the
      // lengths) and special tokens are not text.
      const auto text = [&](const Run& g) {
        std::vector<int32_t> ids(g.tokens.begin(), g.tokens.end());
        if (g.stop == "eos" && !ids.empty()) ids.pop_back();
        return ctx.model.tokenizer().decode(ids, true);
      };
      rec["output"] = text(run);
      rec["output_full"] = text(base);
    }
    out.records.push_back(rec);
    ctx.progress.advance(pr.id);
  }
  ctx.progress.end();

  const double n = static_cast<double>(prompts.size());
  out.summary = to_json(length_shift(len_full, len_method));
  out.summary["median_length_baseline"] = median(len_full);
  out.summary["median_length"] = median(len_method);
  out.summary["median_length_ratio"] = median(len_method) / median(len_full);
  out.summary["tasks"] = length_shift_by_task(prompts, len_full, len_method);
  out.summary["samples"] = prompts.size();
  out.summary["max_new_tokens"] = p["max_new_tokens"];
  out.summary["temperature"] = p["temperature"];
  out.summary["runaway_rate_full"] = static_cast<double>(runaway_full) / n;
  out.summary["runaway_rate"] = static_cast<double>(runaway_method) / n;
  out.summary["e2e_mean_s"] = mean(e2e_method);
  out.summary["e2e_mean_full_s"] = mean(e2e_full);
  // e2e_ratio holds both the length change and the per-token speed; tpot_ratio the speed alone
  // (over the pairs where both made more than one token; null when none did).
  out.summary["e2e_ratio"] = mean(e2e_method) / mean(e2e_full);
  out.summary["e2e_ratio_ci95"] =
      interval_json(ratio_of_sums_ci(e2e_full, e2e_method), e2e_full.size());
  out.summary["tpot_ratio"] =
      tpot_full.empty() ? json() : json(mean(tpot_method) / mean(tpot_full));
  json ctl = json::array();
  for (size_t k = 0; k < controls.size(); ++k) {
    json j = to_json(length_shift(len_full, len_control[k]));
    j["temperature"] = controls[k];
    ctl.push_back(j);
  }
  out.summary["controls"] = ctl;
  json seeds = json::array();
  for (int64_t k = 0; k < seed_controls; ++k) {
    json j = to_json(length_shift(len_full, len_seed[k]));
    j["seed_offset"] = k + 1;
    seeds.push_back(j);
  }
  out.summary["seed_controls"] = seeds;
  if (kept_all)
    if (std::string w = nothing_evicted_warning(ctx.method); !w.empty()) out.warnings.push_back(w);
  if (runaway_full == static_cast<int64_t>(prompts.size())) {
    out.warnings.push_back(
        "every full-cache generation reached max_new_tokens without EOS (the method's: " +
        format_fixed(100.0 * double(runaway_method) / n, 0) +
        "%): lengths are censored at the cap (random weights, or a cap too low)");
  } else if (std::max(runaway_full, runaway_method) >= 0.1 * n) {
    // Capped lengths enter every statistic as if they were lengths: D, the ratio and its
    // interval, the KS test, W1 and the paired test (a pair capped on both sides is a zero
    // difference, dropped; one capped side understates its difference).
    out.warnings.push_back(
        format_fixed(100.0 * double(std::max(runaway_full, runaway_method)) / n, 0) + "% of the " +
        (runaway_full >= runaway_method ? "full cache's" : "method's") +
        " generations reached max_new_tokens without EOS: their lengths are censored at the "
        "cap, and the shift statistics (D, the length ratio and its interval, the paired "
        "Wilcoxon test, KS, W1) treat them as lengths, which understates a shift; raise "
        "max_new_tokens");
  }
  if (prompts.size() < 20) {
    out.warnings.push_back("fewer than 20 samples: the shares and the KS test say little");
  } else {
    // A task's row stands on its own samples: name the tasks too small to read.
    std::vector<std::string> small;
    for (const json& t : out.summary["tasks"])
      if (t["samples"].get<size_t>() < 20 && out.summary["tasks"].size() > 1)
        small.push_back((t["task"].get<std::string>().empty() ? std::string("(no task)")
                                                              : t["task"].get<std::string>()) +
                        " (" + std::to_string(t["samples"].get<size_t>()) + ")");
    if (!small.empty())
      out.warnings.push_back("tasks with fewer than 20 samples: " + join(small, ", ") +
                             ": their rows' intervals and p-values say little");
  }
  // Random ids have no natural end: a trained model's lengths to EOS on them are noise.
  if (!have_text && !ctx.model.identity().value("random_weights", true)) {
    out.warnings.push_back(
        "the prompts are random token ids: a trained model's lengths to EOS on them are those "
        "of noise; give prompt_texts or prompts_file");
  }
  return out;
}

Table OutputLengthSuite::summary_table(const CellOutput& output) const {
  const json& s = output.summary;
  Table t;
  // "paired p": the Wilcoxon signed-rank test of the pairs; "KS p" compares the two
  // distributions as unpaired samples.
  t.columns = {"run",           "mean length",
               "at cap",        "length ratio [95% CI]",
               "D mean %",      ">=50% longer",
               ">=50% shorter", "paired p",
               "KS p",          "W1"};
  auto share = [](const json& j, const char* key) {
    return j.contains(key) ? format_fixed(100 * j[key].get<double>(), 1) + "%" : std::string();
  };
  // A p-value below 0.001 in scientific notation: "0.000" would read as zero.
  auto p_text = [](double p) {
    if (p > 0 && p < 1e-3) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.1e", p);
      return std::string(buf);
    }
    return format_fixed(p, 3);
  };
  auto row = [&](const std::string& name, const json& j, const std::string& capped) {
    const json& ci = j["length_ratio_ci95"];
    t.rows.push_back({name, format_fixed(j["mean_length"].get<double>(), 1), capped,
                      format_fixed(j["length_ratio"].get<double>(), 2) +
                          (ci.is_array() ? " [" + format_fixed(ci[0].get<double>(), 2) + ", " +
                                               format_fixed(ci[1].get<double>(), 2) + "]"
                                         : std::string(" [-]")),
                      format_fixed(j["d_mean"].get<double>(), 1),
                      format_fixed(100 * j["share_longer_50"].get<double>(), 1) + "%",
                      format_fixed(100 * j["share_shorter_50"].get<double>(), 1) + "%",
                      p_text(j["wilcoxon_p_value"].get<double>()),
                      p_text(j["ks_p_value"].get<double>()),
                      format_fixed(j["wasserstein"].get<double>(), 2)});
  };
  t.rows.push_back({"full", format_fixed(s["mean_length_baseline"].get<double>(), 1),
                    share(s, "runaway_rate_full"), "", "", "", "", "", "", ""});
  row("method", s, share(s, "runaway_rate"));
  for (const auto& c : s["controls"])
    row("full @ T=" + format_fixed(c["temperature"].get<double>(), 2), c, "");
  if (s.contains("seed_controls"))  // reports before 2026-12-07 have none
    for (const auto& c : s["seed_controls"])
      row("full, seed +" + std::to_string(c["seed_offset"].get<int64_t>()), c, "");
  return t;
}

}  // namespace kvbench
