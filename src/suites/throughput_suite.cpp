#include "kvbench/suites/throughput_suite.h"

#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/generator.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> ThroughputSuite::param_specs() {
  return {
      ParamSpec::int_list("batch", json::array({1, 4}), "sequences per batch").range(1, 4096),
      ParamSpec::int_list("prompt_tokens", json::array({128, 512}), "prompt lengths")
          .range(1, 1 << 20),
      ParamSpec::int_list("new_tokens", json::array({32}), "generated tokens per sequence")
          .range(2, 1 << 16),
      ParamSpec::integer("warmup", 1, "untimed generations before each point").range(0, 1000),
      ParamSpec::integer("repeats", 3, "timed generations per point").range(1, 100000),
  };
}

namespace {

json run_point(const CellContext& ctx, KVCache& cache, int64_t batch, int64_t prompt,
               int64_t new_tokens, int warmup, int repeats) {
  const Transformer& model = ctx.model.get();
  GenerationConfig g;
  g.max_new_tokens = new_tokens;
  g.ignore_eos = true;
  std::vector<double> prefill, steps;
  uint64_t kv_peak = 0;
  json kv_memory;
  RetentionTimes retention;
  for (int r = 0; r < warmup + repeats; ++r) {
    auto prompts = synthetic_prompts(batch, prompt, model.config().vocab_size, ctx.seed + r);
    GenerationResult res = generate(model, cache, prompts, g);
    if (r < warmup) continue;
    prefill.push_back(res.prefill_s);
    steps.insert(steps.end(), res.decode_step_s.begin(), res.decode_step_s.end());
    retention.add(res);
    if (res.peak_kv_bytes >= kv_peak) kv_memory = kv_memory_json(res, model.config());
    kv_peak = std::max(kv_peak, res.peak_kv_bytes);
  }
  const Summary step = summarize(steps, ctx.seed), pre = summarize(prefill, ctx.seed);
  const double tokens = static_cast<double>(batch) * static_cast<double>(prompt + new_tokens - 1);
  return {{"kind", "throughput"},
          {"batch", batch},
          {"prompt_tokens", prompt},
          {"new_tokens", new_tokens},
          {"samples_s", steps},  // decode step times
          {"prefill_samples_s", prefill},
          {"decode_step_s", to_json(step)},
          {"prefill_s", to_json(pre)},
          {"prefill_tok_s", static_cast<double>(batch * prompt) / pre.median},
          {"decode_tok_s", static_cast<double>(batch) / step.median},
          {"kv_bytes", kv_peak},
          {"kv_memory", kv_memory},
          {"retention", retention.to_json()},
          {"kv_bytes_per_token", static_cast<double>(kv_peak) / tokens}};
}

}  // namespace

uint64_t ThroughputSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  uint64_t peak = 0;
  for (int64_t b : ctx.params["batch"].get<std::vector<int64_t>>())
    for (int64_t p : ctx.params["prompt_tokens"].get<std::vector<int64_t>>())
      for (int64_t n : ctx.params["new_tokens"].get<std::vector<int64_t>>())
        peak = std::max(peak, generation_bytes(*ctx.model, ctx.kv_bytes_per_token, b, p, n));
  return model_weight_bytes(*ctx.model) + peak;
}

CellOutput ThroughputSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const auto batches = p["batch"].get<std::vector<int64_t>>();
  const auto prompts = p["prompt_tokens"].get<std::vector<int64_t>>();
  const auto news = p["new_tokens"].get<std::vector<int64_t>>();
  const int warmup = p["warmup"], repeats = p["repeats"];
  ctx.model.get();  // load before the memory check reads the model's dimensions
  for (int64_t b : batches)
    for (int64_t pr : prompts)
      for (int64_t n : news) check_generation_fits(ctx, b, pr, n, "throughput");
  auto cache = make_cell_cache(ctx);
  CellOutput out;
  ctx.progress.begin(ctx.cell_id, batches.size() * prompts.size() * news.size());
  for (int64_t b : batches) {
    for (int64_t pr : prompts) {
      for (int64_t n : news) {
        out.records.push_back(run_point(ctx, *cache, b, pr, n, warmup, repeats));
        ctx.progress.advance("batch " + std::to_string(b) + ", prompt " + std::to_string(pr));
      }
    }
  }
  ctx.progress.end();
  double best_decode = 0, best_prefill = 0;
  for (const auto& r : out.records) {
    if (r["kv_memory"].value("nominal_mismatch", false)) {
      out.warnings.push_back(
          "batch " + std::to_string(r["batch"].get<int64_t>()) +
          ": measured KV bytes differ from the method's formula by more than 1%");
    }
    best_decode = std::max(best_decode, r["decode_tok_s"].get<double>());
    best_prefill = std::max(best_prefill, r["prefill_tok_s"].get<double>());
  }
  out.summary = {{"points", out.records.size()},
                 {"max_decode_tok_s", best_decode},
                 {"max_prefill_tok_s", best_prefill}};
  return out;
}

Table ThroughputSuite::summary_table(const CellOutput& output) const {
  Table t;
  t.columns = {"batch",   "prompt",      "new",      "prefill tok/s", "decode tok/s",
               "ms/step", "retention %", "KV bytes", "bits/value"};
  for (const auto& r : output.records) {
    t.rows.push_back({std::to_string(r["batch"].get<int64_t>()),
                      std::to_string(r["prompt_tokens"].get<int64_t>()),
                      std::to_string(r["new_tokens"].get<int64_t>()),
                      format_fixed(r["prefill_tok_s"].get<double>(), 1),
                      format_fixed(r["decode_tok_s"].get<double>(), 1),
                      format_fixed(r["decode_step_s"]["median"].get<double>() * 1e3, 2),
                      format_fixed(r["retention"]["decode_share"].get<double>() * 100, 1),
                      format_bytes(r["kv_bytes"].get<double>()),
                      format_fixed(r["kv_memory"]["bits_per_value"].get<double>(), 2)});
  }
  return t;
}

}  // namespace kvbench
