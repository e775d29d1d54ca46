#include "kvbench/suites/serving_suite.h"

#include <algorithm>
#include <map>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/memory.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/sampler.h"
#include "kvbench/kv/codec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/serving/serving_loop.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> ServingSuite::param_specs() {
  return {
      ParamSpec::number_list("rates", json::array({1.0, 4.0, 16.0}),
                             "request arrival rates (requests per second, Poisson); 0 = every "
                             "request at time 0. One record per rate")
          .range(0, 1e6),
      ParamSpec::integer("requests", 32, "requests per rate").range(1, 1000000),
      ParamSpec::integer("prompt_tokens_min", 32, "shortest prompt (uniform)").range(1, 1 << 20),
      ParamSpec::integer("prompt_tokens_max", 256, "longest prompt (uniform)").range(1, 1 << 20),
      ParamSpec::integer("output_tokens_min", 8, "fewest generated tokens (uniform; EOS ignored)")
          .range(1, 1 << 20),
      ParamSpec::integer("output_tokens_max", 64, "most generated tokens (uniform)")
          .range(1, 1 << 20),
      ParamSpec::integer("block_size", 64, "tokens per KV block").range(1, 1 << 16),
      ParamSpec::integer("kv_budget_bytes", 0,
                         "KV pool budget in bytes; 0 = kv_budget_fraction of available memory")
          .range(0, 1e15),
      ParamSpec::number("kv_budget_fraction", 0.1,
                        "KV pool budget as a fraction of the memory available at the cell's "
                        "start, when kv_budget_bytes is 0")
          .range(1e-6, 0.9),
      ParamSpec::integer("max_batch_tokens", 2048,
                         "tokens entering the model per step (prefills + one per decode)")
          .range(1, 1 << 24),
      ParamSpec::integer("max_running", 64, "sequences decoding at once").range(1, 1 << 16),
      ParamSpec::number("slo_ttft_s", 2.0, "goodput: TTFT threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
      ParamSpec::number("slo_tpot_s", 0.2, "goodput: TPOT threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
      ParamSpec::number("slo_e2e_s", 0.0,
                        "goodput: end-to-end threshold in seconds (0 = unchecked)")
          .range(0, 1e6),
  };
}

double method_block_bytes(const json& method, const ModelConfig& c, at::ScalarType dtype,
                          int64_t block_size) {
  auto codec = make_codec(method, dtype);
  // Building the stores checks the method against the model (e.g. group vs head_dim); codecs
  // that need preparation check it in their formula (their stores need the fitted bases).
  if (!codec->needs_preparation()) {
    codec->make_key_store(c.num_kv_heads, c.head_dim);
    codec->make_value_store(c.num_kv_heads, c.head_dim);
  }
  constexpr int64_t kBlocks = 64;
  const double bytes =
      static_cast<double>(
          codec->nominal_bytes(kBlocks * block_size, c.num_kv_heads, c.head_dim).total()) *
      static_cast<double>(c.num_layers);
  return bytes / kBlocks;
}

namespace {

struct Workload {
  std::vector<int64_t> prompt_len, output_len;
  std::vector<std::vector<int64_t>> prompts;
};

void check_ranges(const json& p) {
  for (const char* what : {"prompt_tokens", "output_tokens"}) {
    const std::string lo = std::string(what) + "_min", hi = std::string(what) + "_max";
    if (p[lo].get<int64_t>() > p[hi].get<int64_t>()) {
      throw Error("serving: " + hi + " (" + std::to_string(p[hi].get<int64_t>()) +
                  ") must be >= " + lo + " (" + std::to_string(p[lo].get<int64_t>()) + ")");
    }
  }
  KVB_CHECK(p["kv_budget_bytes"].get<double>() >= 0, "serving: kv_budget_bytes must be >= 0");
}

// The same requests for every method and rate: seeded by the run seed, not the cell seed.
Workload make_workload(const json& p, int64_t vocab, uint64_t seed) {
  Rng rng(seed ^ 0x5e7e1a9d5eedull);
  Workload w;
  const int64_t n = p["requests"];
  auto draw = [&](int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(hi - lo + 1)));
  };
  for (int64_t i = 0; i < n; ++i) {
    w.prompt_len.push_back(draw(p["prompt_tokens_min"], p["prompt_tokens_max"]));
    w.output_len.push_back(draw(p["output_tokens_min"], p["output_tokens_max"]));
    std::vector<int64_t> ids(static_cast<size_t>(w.prompt_len.back()));
    for (auto& id : ids) id = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
    w.prompts.push_back(std::move(ids));
  }
  return w;
}

// Runs each planned step on the model: preempted sequences leave the cache, admitted ones are
// prefilled from every token they know (prompt + generated: the recompute), running ones
// decode their latest token. Greedy sampling, EOS ignored.
class ModelExecutor final : public StepExecutor {
 public:
  ModelExecutor(const Transformer& model, KVCache& cache, const Workload& w, Progress& progress)
      : model_(model), cache_(cache), progress_(progress), tokens_(w.prompts) {
    seq_.assign(tokens_.size(), -1);
  }
  void execute(const StepPlan& plan) override {
    for (int64_t id : plan.preempted) drop(id);
    std::vector<SequenceStep> batch;
    std::vector<int64_t> ids;
    for (int64_t id : plan.decodes) {
      KVB_CHECK(seq_[id] >= 0, "serving: decode of request ", id, " without a cache sequence");
      batch.push_back({seq_[id], {tokens_[id].back()}});
      ids.push_back(id);
    }
    for (const PrefillItem& p : plan.prefills) {
      KVB_CHECK(seq_[p.id] < 0, "serving: prefill of request ", p.id, " that is running");
      KVB_CHECK(static_cast<int64_t>(tokens_[p.id].size()) == p.tokens, "serving: request ", p.id,
                " knows ", tokens_[p.id].size(), " tokens but the scheduler prefills ", p.tokens);
      seq_[p.id] = cache_.add_sequence();
      batch.push_back({seq_[p.id], tokens_[p.id]});
      ids.push_back(p.id);
    }
    at::Tensor logits = model_.forward(batch, cache_);
    for (size_t r = 0; r < ids.size(); ++r) {
      tokens_[ids[r]].push_back(sampler_.next(logits[static_cast<int64_t>(r)]));
    }
  }
  void finished(const std::vector<int64_t>& ids) override {
    for (int64_t id : ids) {
      drop(id);
      progress_.advance("request " + std::to_string(id));
    }
  }
  double kv_bytes() const override { return static_cast<double>(cache_.bytes()); }

 private:
  void drop(int64_t id) {
    if (seq_[id] >= 0) cache_.remove_sequence(seq_[id]);
    seq_[id] = -1;
  }
  const Transformer& model_;
  KVCache& cache_;
  Progress& progress_;
  Sampler sampler_{SamplingParams{}};
  std::vector<std::vector<int64_t>> tokens_;  // prompt + generated, per request
  std::vector<int64_t> seq_;                  // cache sequence id, -1 when not running
};

SchedulerConfig scheduler_config(const json& p, const json& method, int64_t num_layers) {
  SchedulerConfig s;
  s.max_batch_tokens = p["max_batch_tokens"];
  s.max_running = p["max_running"];
  auto policy = make_policy(method);
  // One cap per sequence: the largest layer budget at the longest context the cell can see
  // (budgets may differ per layer and grow with the length); none for a policy that never evicts.
  const int64_t longest =
      p["prompt_tokens_max"].get<int64_t>() + p["output_tokens_max"].get<int64_t>();
  int64_t budget = 0;
  RetentionInput in;
  in.num_layers = num_layers;
  in.length = longest;
  for (int64_t l = 0; l < num_layers; ++l) {
    in.layer = l;
    budget = std::max(budget, policy->budget(in));
  }
  if (budget != INT64_MAX) {
    s.retention_budget = budget;
    s.evict_during_decode = policy->timing() == EvictionTiming::kDecode;
  }
  return s;
}

double budget_bytes(const json& p) {
  const double bytes = p["kv_budget_bytes"].get<double>();
  if (bytes > 0) return bytes;
  const uint64_t available = available_memory_bytes();
  KVB_CHECK(available > 0,
            "serving: the available memory is unknown; set kv_budget_bytes explicitly");
  return p["kv_budget_fraction"].get<double>() * static_cast<double>(available);
}

}  // namespace

uint64_t ServingSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const json& p = ctx.params;
  const double budget =
      p["kv_budget_bytes"].get<double>() > 0
          ? p["kv_budget_bytes"].get<double>()
          : p["kv_budget_fraction"].get<double>() * static_cast<double>(available_memory_bytes());
  // Weights, the pool, and the activations of the largest step (one sequence of
  // max_batch_tokens bounds the attention scores).
  return model_weight_bytes(*ctx.model) + static_cast<uint64_t>(budget) +
         generation_bytes(*ctx.model, 0, 1, p["max_batch_tokens"], 0);
}

CellOutput ServingSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  require_cpu(ctx, "serving");
  check_ranges(p);
  const Transformer& model = ctx.model.get();
  const ModelConfig& c = model.config();
  const int64_t block_size = p["block_size"];
  const double block_bytes = method_block_bytes(ctx.method, c, ctx.model.kv_dtype(), block_size);
  const double budget = budget_bytes(p);
  const int64_t num_blocks = BlockPool::capacity(budget, block_bytes);
  check_memory_fits(
      static_cast<uint64_t>(budget) + generation_bytes(c, 0, 1, p["max_batch_tokens"], 0),
      "serving: a KV budget of " + format_bytes(budget));
  const SchedulerConfig sched = scheduler_config(p, ctx.method, c.num_layers);
  const Workload w = make_workload(p, c.vocab_size, ctx.spec.seed);
  SloThresholds slo;
  slo.ttft_s = p["slo_ttft_s"];
  slo.tpot_s = p["slo_tpot_s"];
  slo.e2e_s = p["slo_e2e_s"];
  const std::vector<double> rates = p["rates"].get<std::vector<double>>();
  KVB_CHECK(!rates.empty(), "serving: rates is empty");
  auto cache = make_cell_cache(ctx);

  // Warm-up (untimed): one short request through the same path, so first-call costs
  // (allocator, thread pool) stay out of the first rate's numbers.
  {
    BlockPool pool(num_blocks, block_size);
    Scheduler s(pool, sched);
    Workload one = w;
    one.prompts.resize(1);
    NullProgress quiet;
    ModelExecutor ex(model, *cache, one, quiet);
    ManualClock clock;
    run_serving({{0, 0.0, w.prompt_len[0], std::min<int64_t>(w.output_len[0], 4)}}, s, ex, clock);
  }

  CellOutput out;
  json per_rate = json::array();
  ctx.progress.begin(ctx.cell_id, rates.size() * w.prompts.size());
  for (size_t ri = 0; ri < rates.size(); ++ri) {
    const double rate = rates[ri];
    const std::vector<double> arrivals =
        poisson_arrivals(static_cast<int64_t>(w.prompts.size()), rate, ctx.spec.seed + 1);
    std::vector<ServingRequest> reqs;
    for (size_t i = 0; i < w.prompts.size(); ++i) {
      reqs.push_back({static_cast<int64_t>(i), arrivals[i], w.prompt_len[i], w.output_len[i]});
    }
    BlockPool pool(num_blocks, block_size);
    Scheduler s(pool, sched);
    ModelExecutor ex(model, *cache, w, ctx.progress);
    SkippingWallClock clock;
    ServingTrace trace = run_serving(reqs, s, ex, clock);
    KVB_CHECK(pool.free_blocks() == pool.num_blocks(), "serving: ", pool.used_blocks(),
              " blocks still held after every request finished");
    json m = serving_metrics(trace, slo, block_bytes);
    std::vector<double> ttft, e2e;
    json per_request = json::array();
    for (const auto& r : trace.requests) {
      ttft.push_back(r.token_times_s.front() - r.request.arrival_s);
      e2e.push_back(r.token_times_s.back() - r.request.arrival_s);
      per_request.push_back({{"id", r.request.id},
                             {"arrival_s", r.request.arrival_s},
                             {"prompt_tokens", r.request.prompt_tokens},
                             {"output_tokens", r.request.output_tokens},
                             {"ttft_s", ttft.back()},
                             {"e2e_s", e2e.back()},
                             {"preemptions", r.preemptions}});
    }
    json record = {{"kind", "serving"},
                   {"rate", rate},
                   {"samples_s", e2e},
                   {"ttft_samples_s", ttft},
                   {"requests_detail", per_request}};
    record.update(m);
    out.records.push_back(record);
    json row = m;
    row["rate"] = rate;
    per_rate.push_back(row);
    if (m["preemptions"].get<int64_t>() > 0) {
      out.warnings.push_back("rate " + format_fixed(rate, 2) + ": " +
                             std::to_string(m["preemptions"].get<int64_t>()) +
                             " preemptions (KV pool exhausted; requests recomputed)");
    }
  }
  ctx.progress.end();

  out.summary = {{"rates", rates},
                 {"requests", w.prompts.size()},
                 {"block_size", block_size},
                 {"bytes_per_block", block_bytes},
                 {"kv_budget_bytes", budget},
                 {"num_blocks", num_blocks},
                 {"pool_tokens", num_blocks * block_size},
                 {"retention_budget", sched.retention_budget},
                 {"max_batch_tokens", sched.max_batch_tokens},
                 {"max_running", sched.max_running},
                 {"per_rate", per_rate}};
  return out;
}

Table ServingSuite::summary_table(const CellOutput& output) const {
  Table t;
  t.columns = {"rate/s",          "req/s",         "tok/s",   "goodput/s", "TTFT p50/p99 ms",
               "TPOT p50/p99 ms", "e2e p50/p99 s", "KV peak", "preempt"};
  auto pair_ms = [](const json& s) {
    if (s.is_null()) return std::string("-");
    return format_fixed(s["p50"].get<double>() * 1e3, 1) + " / " +
           format_fixed(s["p99"].get<double>() * 1e3, 1);
  };
  for (const auto& r : output.summary["per_rate"]) {
    t.rows.push_back({format_fixed(r["rate"].get<double>(), 2),
                      format_fixed(r["request_throughput"].get<double>(), 2),
                      format_fixed(r["token_throughput"].get<double>(), 1),
                      format_fixed(r["goodput"]["requests_per_s"].get<double>(), 2),
                      pair_ms(r["ttft_s"]), pair_ms(r["tpot_s"]),
                      format_fixed(r["e2e_s"]["p50"].get<double>(), 2) + " / " +
                          format_fixed(r["e2e_s"]["p99"].get<double>(), 2),
                      format_bytes(r["kv"]["pool_bytes_peak"].get<double>()),
                      std::to_string(r["preemptions"].get<int64_t>())});
  }
  return t;
}

}  // namespace kvbench
