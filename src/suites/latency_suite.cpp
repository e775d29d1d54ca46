#include "kvbench/suites/latency_suite.h"

#include <algorithm>

#include "kvbench/core/error.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/generator.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> LatencySuite::param_specs() {
  return {
      ParamSpec::integer("prompt_tokens", 128, "prompt length (synthetic token ids)")
          .range(1, 1 << 20),
      ParamSpec::integer("new_tokens", 32, "tokens generated per request (EOS ignored)")
          .range(2, 1 << 16),
      ParamSpec::integer("batch", 1, "concurrent requests per generation").range(1, 1024),
      ParamSpec::string("prompt_text", "",
                        "a text prompt, tokenized with the model's tokenizer (special tokens "
                        "added as the tokenizer does) and used for every request instead of "
                        "synthetic ids; prompt_tokens is then its length"),
      ParamSpec::integer("warmup", 1, "untimed generations first").range(0, 1000),
      ParamSpec::integer("repeats", 10, "timed generations (all samples kept)").range(1, 100000),
  };
}

uint64_t LatencySuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const json& p = ctx.params;
  // A text prompt as long as it is (prompt_tokens then sizes nothing).
  const std::string& text = p["prompt_text"].get_ref<const std::string&>();
  const int64_t prompt = text.empty() ? p["prompt_tokens"].get<int64_t>()
                                      : text_token_estimate(text.size(), ctx.model->vocab_size);
  const int64_t news = p["new_tokens"];
  return model_weight_bytes(*ctx.model, ctx.weight_dtype) + ctx.shared_bytes +
         generation_bytes(*ctx.model, ctx.kv_bytes_per_token_at(prompt + news), p["batch"], prompt,
                          news, ctx.weight_dtype);
}

CellOutput LatencySuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const int64_t new_tokens = p["new_tokens"], batch = p["batch"];
  const int warmup = p["warmup"], repeats = p["repeats"];
  const Transformer& model = ctx.model.get();
  std::vector<int64_t> text_ids;
  if (!p["prompt_text"].get<std::string>().empty()) {
    for (int32_t id : ctx.model.tokenizer().encode(p["prompt_text"].get<std::string>(), true)) {
      KVB_CHECK(id < model.config().vocab_size, "latency: the tokenizer gave id ", id,
                " beyond the model's vocabulary of ", model.config().vocab_size);
      text_ids.push_back(id);
    }
    KVB_CHECK(!text_ids.empty(), "latency: prompt_text encodes to no tokens");
  }
  const int64_t prompt =
      text_ids.empty() ? p["prompt_tokens"].get<int64_t>() : static_cast<int64_t>(text_ids.size());
  check_generation_fits(ctx, batch, prompt, new_tokens, "latency");
  auto cache = make_cell_cache(ctx);
  GenerationConfig g;
  g.max_new_tokens = new_tokens;
  g.ignore_eos = true;

  std::vector<double> ttft, tpot, e2e, itl;
  std::vector<std::string> hashes;  // each timed generation's prompts
  uint64_t kv_peak = 0;
  json kv_memory;
  RetentionTimes retention;
  ctx.progress.begin(ctx.cell_id, static_cast<size_t>(warmup + repeats));
  for (int r = 0; r < warmup + repeats; ++r) {
    // Seeded by the run, not the cell: every method times the same ids.
    auto prompts =
        text_ids.empty()
            ? synthetic_prompts(batch, prompt, model.config().vocab_size, ctx.spec.seed + r)
            : std::vector<std::vector<int64_t>>(static_cast<size_t>(batch), text_ids);
    GenerationResult res = generate(model, *cache, prompts, g);
    ctx.progress.advance(r < warmup ? "warm-up" : "repeat " + std::to_string(r - warmup + 1));
    if (r < warmup) continue;
    hashes.push_back(prompts_hash(prompts));
    if (res.peak_kv_bytes >= kv_peak) kv_memory = kv_memory_json(res, model.config());
    kv_peak = std::max(kv_peak, res.peak_kv_bytes);
    retention.add(res);
    for (const auto& s : res.sequences) {
      const auto& t = s.token_times_s;
      ttft.push_back(t.front());
      e2e.push_back(t.back());
      tpot.push_back((t.back() - t.front()) / static_cast<double>(t.size() - 1));
      for (size_t i = 1; i < t.size(); ++i) itl.push_back(t[i] - t[i - 1]);
    }
  }
  ctx.progress.end();

  CellOutput out;
  json metrics = json::object();
  for (const auto& [name, samples] : std::vector<std::pair<std::string, std::vector<double>*>>{
           {"ttft", &ttft}, {"tpot", &tpot}, {"itl", &itl}, {"e2e", &e2e}}) {
    // One generation's samples move together (its batch shares every step, a request's gaps
    // share its context): the interval resamples whole generations (batch samples each, batch
    // x (new_tokens - 1) for ITL), not single samples.
    const size_t block =
        samples->size() % size_t(repeats) == 0 ? samples->size() / size_t(repeats) : 1;
    json summary = to_json(summarize(*samples, ctx.seed, block));
    out.records.push_back({{"kind", name},
                           {"samples_s", *samples},
                           {"samples_per_generation", block},
                           {"time_s", summary}});
    metrics[name + "_s"] = summary;
  }
  out.summary = metrics;
  out.summary["prompt_tokens"] = prompt;
  out.summary["new_tokens"] = new_tokens;
  out.summary["batch"] = batch;
  out.summary["requests"] = ttft.size();
  out.summary["prompt_hashes"] = hashes;
  out.summary["kv_bytes_peak"] = kv_peak;
  out.summary["kv_memory"] = kv_memory;
  out.summary["retention"] = retention.to_json();
  if (std::string w = nominal_mismatch_warning(kv_memory); !w.empty())
    out.warnings.push_back(std::move(w));
  if (std::string w = nothing_evicted_warning(ctx.method, kv_memory); !w.empty())
    out.warnings.push_back(std::move(w));
  return out;
}

Table LatencySuite::summary_table(const CellOutput& output) const {
  Table t;
  t.columns = {"metric", "n",       "median ms", "p90 ms",
               "p99 ms", "mean ms", "stddev ms", "95% CI (median)"};
  for (const auto& r : output.records) {
    const json& s = r["time_s"];
    auto ms = [&](const char* key) { return format_fixed(s[key].get<double>() * 1e3, 2); };
    const int64_t n = s.value("n", int64_t{0});
    // Below kMinUnitsForMedianCi resampled units (samples, or generations when a generation's
    // samples are drawn together) the summary has no interval (stats.h says why).
    const int64_t block = std::max<int64_t>(r.value("samples_per_generation", int64_t{1}), 1);
    const std::string ci = s["median_ci95"].is_null()
                               ? "- (< " + std::to_string(kMinUnitsForMedianCi) +
                                     (block > 1 ? " generations)" : " samples)")
                               : format_fixed(s["median_ci95"][0].get<double>() * 1e3, 2) + " - " +
                                     format_fixed(s["median_ci95"][1].get<double>() * 1e3, 2);
    t.rows.push_back({r["kind"].get<std::string>(), std::to_string(n), ms("median"), ms("p90"),
                      ms("p99"), ms("mean"), ms("stddev"), ci});
  }
  const std::string memory = kv_memory_note(output.summary.value("kv_memory", json()));
  if (!memory.empty()) t.notes.push_back(memory);
  return t;
}

}  // namespace kvbench
