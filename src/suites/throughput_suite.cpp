#include "kvbench/suites/throughput_suite.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/phase_clock.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/generator.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/quest_policy.h"
#include "kvbench/suites/capacity.h"
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
      ParamSpec::integer("warmup", 1,
                         "untimed generations before each point; the last is split into phases")
          .range(0, 1000),
      ParamSpec::integer("repeats", 3, "timed generations per point").range(1, 100000),
      ParamSpec::integer("capacity_context", 0,
                         "capacity view: tokens each sequence holds (0 = no capacity view); the "
                         "largest batch whose KV bytes fit the budget, and its decode tok/s")
          .range(0, 1 << 24),
      ParamSpec::integer("capacity_new_tokens", 8,
                         "capacity view: tokens generated at the capacity batch, so "
                         "capacity_new_tokens - 1 decode steps timed (the prompt is "
                         "capacity_context - capacity_new_tokens + 1 tokens)")
          .range(2, 1 << 16),
      ParamSpec::integer("kv_budget_bytes", 0,
                         "capacity view: KV memory budget in bytes; 0 = kv_budget_fraction of "
                         "device_memory_bytes")
          .range(0, 1e15),
      ParamSpec::number("kv_budget_fraction", 0.5,
                        "capacity view: the budget as a fraction of device_memory_bytes, when "
                        "kv_budget_bytes is 0")
          .range(1e-6, 1),
      ParamSpec::integer("device_memory_bytes", 0,
                         "capacity view: the stated device memory the fraction applies to; 0 = "
                         "the memory available at the run's first such cell, read once per "
                         "run (on a GPU: its memory less the weights)")
          .range(0, 1e15),
      ParamSpec::integer("max_batch", 64,
                         "capacity view: the largest batch run here; a larger fitting batch is "
                         "recorded but measured at this one")
          .range(1, 1 << 20),
  };
}

namespace {

// Where the steps of a generation went (GenerationConfig::phases): the prefill's phases and,
// per phase, the median over the decode steps after the first (the first may still grow
// buffers). Shares are of the sum of those medians.
json phases_json(const GenerationResult& res, const std::vector<std::string>& names,
                 const at::Device& device) {
  const size_t skip = res.decode_phase_s.size() > 1 ? 1 : 0;
  json prefill = json::object(), decode = json::object(), share = json::object();
  std::vector<double> medians, steps;
  for (size_t i = skip; i < res.decode_step_s.size(); ++i) steps.push_back(res.decode_step_s[i]);
  for (size_t p = 0; p < names.size(); ++p) {
    std::vector<double> per_step;
    for (size_t i = skip; i < res.decode_phase_s.size(); ++i)
      per_step.push_back(res.decode_phase_s[i][p]);
    medians.push_back(per_step.empty() ? 0.0 : median(per_step));
    prefill[names[p]] = res.prefill_phase_s.empty() ? 0.0 : res.prefill_phase_s[p];
    decode[names[p]] = medians.back();
  }
  double total = 0;
  for (double m : medians) total += m;
  for (size_t p = 0; p < names.size(); ++p) share[names[p]] = total > 0 ? medians[p] / total : 0.0;
  return {{"from", "the last warmup generation (untimed)"},
          {"clock", device.is_cuda() ? "CUDA events on the step's stream" : "wall clock"},
          {"prefill_s", prefill},
          {"decode_step_s", decode},
          {"decode_total_s", total},
          {"decode_share", share},
          // The same steps by the generator's stopwatch (with the marks' cost in them), and how
          // many: beside the timed steps' median they say how far the split is from it.
          {"decode_steps", steps.size()},
          {"split_step_s", steps.empty() ? 0.0 : median(steps)}};
}

}  // namespace

double quest_step_read_bytes(const QuestPolicy& quest, const ModelConfig& c, int64_t batch,
                             int64_t held_tokens, double held_bytes) {
  const int64_t layers = c.num_layers, dense = std::min(quest.dense_layers(), layers);
  const double bounds = static_cast<double>(batch * (layers - dense)) *
                        static_cast<double>(QuestPages::nominal_bytes(
                            held_tokens, c.num_kv_heads, c.head_dim, quest.page_size()));
  const double per_layer = std::max(held_bytes - bounds, 0.0) / static_cast<double>(layers);
  if (!quest.sparse(dense, held_tokens)) return per_layer * static_cast<double>(layers);
  const double share =
      static_cast<double>(quest.tokens_read(held_tokens)) / static_cast<double>(held_tokens);
  return per_layer * (static_cast<double>(dense) + static_cast<double>(layers - dense) * share) +
         bounds;
}

namespace {

json run_point(const CellContext& ctx, KVCache& cache, int64_t batch, int64_t prompt,
               int64_t new_tokens, int warmup, int repeats, int64_t prefill_group = 0) {
  const Transformer& model = ctx.model.get();
  GenerationConfig g;
  g.max_new_tokens = new_tokens;
  g.ignore_eos = true;
  g.prefill_group = prefill_group;
  std::vector<double> prefill, steps, host, step_kv;
  std::vector<std::string> hashes;  // each timed generation's prompts
  // Quest holds every token, but a step reads only its chosen pages in the sparse layers.
  const std::shared_ptr<const RetentionPolicy> policy = make_policy(ctx.method);
  const auto* quest = dynamic_cast<const QuestPolicy*>(policy.get());
  uint64_t kv_peak = 0;
  json kv_memory;
  RetentionTimes retention;
  // The last warmup generation is split into phases (its marks would add host time to a timed
  // one).
  PhaseClock clock(model.placement().device, forward_phase_names());
  clock.reserve(static_cast<size_t>(6 * model.config().num_layers + 4));  // a step's marks
  json phases;
  for (int r = 0; r < warmup + repeats; ++r) {
    // Seeded by the run, not the cell: every method times the same ids.
    auto prompts = synthetic_prompts(batch, prompt, model.config().vocab_size, ctx.spec.seed + r);
    g.phases = r + 1 == warmup ? &clock : nullptr;
    GenerationResult res = generate(model, cache, prompts, g);
    if (g.phases) phases = phases_json(res, clock.names(), model.placement().device);
    if (r < warmup) continue;
    hashes.push_back(prompts_hash(prompts));
    prefill.push_back(res.prefill_s);
    steps.insert(steps.end(), res.decode_step_s.begin(), res.decode_step_s.end());
    host.insert(host.end(), res.decode_step_host_s.begin(), res.decode_step_host_s.end());
    retention.add(res);
    for (size_t k = 0; k < res.decode_step_kv_bytes.size(); ++k) {
      const double held = static_cast<double>(res.decode_step_kv_bytes[k]);
      // Decode step k holds prompt + k + 1 tokens per sequence (EOS ignored: all alike).
      step_kv.push_back(quest ? quest_step_read_bytes(*quest, model.config(), batch,
                                                      prompt + static_cast<int64_t>(k) + 1, held)
                              : held);
    }
    if (res.peak_kv_bytes >= kv_peak) kv_memory = kv_memory_json(res, model.config());
    kv_peak = std::max(kv_peak, res.peak_kv_bytes);
  }
  // One generation's steps move together (one batch, one growing context, the machine's speed
  // during those seconds): intervals resample whole generations.
  const size_t block =
      steps.size() % size_t(repeats) == 0 ? std::max<size_t>(steps.size() / size_t(repeats), 1) : 1;
  const Summary step = summarize(steps, ctx.seed, block), pre = summarize(prefill, ctx.seed);
  const Summary issue = summarize(host, ctx.seed, host.size() == steps.size() ? block : size_t{1});
  // The tokens entered at the peak: batch * (prompt + new_tokens - 1) unless the bytes fell later
  // (KIVI's window folding into groups), so the per-token rate is the peak's own.
  const double tokens =
      kv_memory.is_object() && kv_memory.value("tokens", int64_t{0}) > 0
          ? static_cast<double>(kv_memory["tokens"].get<int64_t>())
          : static_cast<double>(batch) * static_cast<double>(prompt + new_tokens - 1);
  // What a decode step must read at least: every weight once (an untied embedding: the batch's
  // rows) and the cache as the median step held it, or for Quest read it (the peak is the last
  // step's alone: with new_tokens near the prompt it would overstate the middle step's bytes,
  // and paired with the median time, the rate). Between methods its ratio is the
  // ideal decode speed-up of a memory-bound step. Empty page slots (paged attention) are neither
  // read nor a token's bytes.
  const uint64_t padding =
      kv_memory.is_object() ? kv_memory["measured"].value("padding", uint64_t{0}) : uint64_t{0};
  const uint64_t kv_held = kv_peak - std::min(padding, kv_peak);
  const uint64_t step_kv_read = step_kv.empty() ? kv_held : static_cast<uint64_t>(median(step_kv));
  const uint64_t step_bytes = model.decode_step_weight_bytes(batch) + step_kv_read;
  return {{"kind", "throughput"},
          {"batch", batch},
          {"prompt_tokens", prompt},
          {"new_tokens", new_tokens},
          {"prompt_hashes", hashes},
          {"samples_s", steps},  // decode step times
          {"samples_per_generation", block},
          {"prefill_samples_s", prefill},
          {"decode_step_s", to_json(step)},
          // On a GPU: how long the host took to issue a step; a share near 1 means the step
          // waits for launches, not for memory (on the CPU the share is ~1 by construction).
          {"decode_host_s", to_json(issue)},
          {"decode_host_share", issue.median / step.median},
          {"prefill_s", to_json(pre)},
          {"prefill_tok_s", static_cast<double>(batch * prompt) / pre.median},
          {"decode_tok_s", static_cast<double>(batch) / step.median},
          {"kv_bytes", kv_peak},
          {"kv_memory", kv_memory},
          {"retention", retention.to_json()},
          {"kv_bytes_per_token", static_cast<double>(kv_held) / tokens},
          {"decode_bytes_per_step", step_bytes},
          {"decode_gbps", static_cast<double>(step_bytes) / step.median / 1e9},
          {"phases", phases}};  // null without a warmup generation
}

struct Budget {
  double bytes = 0;
  std::string source;
};

// `device`, `weight_bytes`: where the cell runs and its model's weights (kv_budget_base_bytes).
// `once_per_run`: as kv_budget_base_bytes's (a cell's run, not an estimate).
Budget capacity_budget(const json& p, const at::Device& device, uint64_t weight_bytes,
                       bool once_per_run) {
  if (p["kv_budget_bytes"].get<double>() > 0) {
    return {p["kv_budget_bytes"].get<double>(), "kv_budget_bytes"};
  }
  const double fraction = p["kv_budget_fraction"];
  if (p["device_memory_bytes"].get<double>() > 0) {
    return {fraction * p["device_memory_bytes"].get<double>(),
            "kv_budget_fraction of device_memory_bytes"};
  }
  const uint64_t available = kv_budget_base_bytes(device, weight_bytes, once_per_run);
  KVB_CHECK(available > 0,
            "throughput: the available memory is unknown; set kv_budget_bytes or "
            "device_memory_bytes for the capacity view");
  return {fraction * static_cast<double>(available),
          device.is_cpu()
              ? "kv_budget_fraction of the memory available at the run's first budgeted cell"
              : "kv_budget_fraction of the GPU's memory less the model's weights"};
}

// The capacity view: the largest batch of capacity_context-token sequences whose KV bytes (the
// method's formula) fit the budget, and the decode throughput measured at that batch (or at
// max_batch when the fitting batch is larger). `budget`: read when the cell started, before
// the grid's allocations. The batch prefills one sequence at a time, as the formula's
// batch_bytes counts one prompt entering while the others are held (a packed prefill of the
// batch would hold every prompt entering at once, and every prompt's activations). Returns the
// summary entry; appends the record. A batch that cannot be measured (it does not fit memory
// beside the weights, an allocation fails) leaves the entry's decode_tok_s null with the
// reason in `error` and a warning: the grid's points stand.
json run_capacity(const CellContext& ctx, KVCache& cache, const Codec& codec, const Budget& budget,
                  CellOutput& out) {
  const json& p = ctx.params;
  const ModelConfig& c = ctx.model.get().config();
  const int64_t context = p["capacity_context"], news = p["capacity_new_tokens"];
  const int64_t prompt = context - news + 1;
  ThroughputSuite::check_params(p);
  auto policy = make_policy(ctx.method);
  const SequenceKvBytes bytes = sequence_kv_bytes(
      codec, *policy, c, prompt, context,
      CacheLayout::for_method(ctx.method, ctx.model.kv_dtype(), c.head_dim,
                              ctx.spec.attention == "paged",
                              CacheLayout::kernel_path(ctx.model.placement().device.is_cuda())));
  const int64_t fit = largest_batch(budget.bytes, bytes);
  const int64_t cap = p["max_batch"];
  const int64_t batch = std::min(fit, cap);
  json summary = {{"context", context},
                  {"kv_budget_bytes", budget.bytes},
                  {"budget_source", budget.source},
                  {"bytes_per_sequence", bytes.per_sequence},
                  {"prefill_bytes_per_sequence", bytes.prefill},
                  {"retention_bytes_per_sequence", bytes.retention},
                  {"max_batch_fit", fit},
                  {"kv_bytes_at_fit", fit > 0 ? json(bytes.batch_bytes(fit)) : json(nullptr)},
                  {"max_batch", cap},
                  {"batch", batch},
                  {"capped", fit > cap},
                  {"decode_tok_s", nullptr}};
  if (fit == 0) {
    out.warnings.push_back(
        "capacity: a budget of " + format_bytes(budget.bytes) + " holds no sequence of " +
        std::to_string(context) + " tokens (" +
        format_bytes(static_cast<double>(bytes.per_sequence + bytes.retention)) + " each" +
        (bytes.prefill + bytes.prefill_retention > bytes.per_sequence + bytes.retention
             ? ", " + format_bytes(static_cast<double>(bytes.prefill + bytes.prefill_retention)) +
                   " while its prompt enters"
             : std::string()) +
        "); raise kv_budget_bytes or lower capacity_context");
    return summary;
  }
  // Only memory failures leave the grid standing; any other error (a kernel's, NaN logits)
  // fails the cell as before.
  std::string unmeasured;
  json r;
  try {
    check_generation_fits(ctx, batch, prompt, news, "throughput (capacity view; lower max_batch)",
                          /*prefill_group=*/1);
    r = run_point(ctx, cache, batch, prompt, news, p["warmup"], p["repeats"], /*prefill_group=*/1);
  } catch (const MemoryFitError& e) {
    unmeasured = e.what();
  } catch (const c10::OutOfMemoryError& e) {
    unmeasured = e.what_without_backtrace();
  } catch (const std::bad_alloc&) {
    unmeasured = "an allocation failed (out of memory)";
  }
  if (!unmeasured.empty()) {
    summary["error"] = unmeasured;
    out.warnings.push_back(
        "capacity: batch " + std::to_string(batch) + " of " + std::to_string(context) +
        "-token sequences could not be measured (the grid's points stand): " + unmeasured);
    return summary;
  }
  const uint64_t formula_at_batch =
      bytes.shared + static_cast<uint64_t>(batch) * bytes.per_sequence;
  // Empty slots count where the plan counts whole pages or GEAR's whole buffers (they hold
  // memory as much as tokens do); a formula counting tokens (the CPU stores) leaves them out.
  const double measured =
      r["kv_memory"]["measured"]["total"].get<double>() -
      (bytes.whole_pages ? 0.0 : r["kv_memory"]["measured"].value("padding", 0.0));
  r["kind"] = "capacity";
  r["prefill_group"] = 1;
  r["context"] = context;
  r["kv_budget_bytes"] = budget.bytes;
  r["budget_source"] = budget.source;
  r["bytes_per_sequence"] = bytes.per_sequence;
  r["shared_bytes"] = bytes.shared;
  r["held_tokens_per_layer"] = bytes.held_per_layer;
  r["max_batch_fit"] = fit;
  r["prefill_bytes_per_sequence"] = bytes.prefill;
  r["retention_bytes_per_sequence"] = bytes.retention;
  r["prefill_retention_bytes_per_sequence"] = bytes.prefill_retention;
  r["retention_bytes_exact"] = bytes.retention_exact;
  r["kv_bytes_at_fit"] = bytes.batch_bytes(fit);
  r["max_batch"] = cap;
  r["capped"] = fit > cap;
  r["kv_bytes_formula"] = formula_at_batch;
  r["kv_bytes_exact"] = bytes.kv_exact;
  // A bound (a paged cache's free slots between compactions) holds what was measured.
  const double formula = static_cast<double>(formula_at_batch);
  r["formula_matches_measured"] = bytes.kv_exact ? std::abs(measured - formula) <= 0.01 * formula
                                                 : measured <= formula * (1 + 1e-9);
  if (!r["formula_matches_measured"].get<bool>()) {
    out.warnings.push_back("capacity: the cache measured " + format_bytes(measured) + " at batch " +
                           std::to_string(batch) + " where the method's formula says " +
                           (bytes.kv_exact ? "" : "at most ") + format_bytes(formula) +
                           "; the capacity counts the formula");
  }
  // The plan's bookkeeping at the batch, and the per-token model against what the cache
  // measured at its peak (which for KIVI or GEAR may come before `context`): for the tokens it
  // held then, exact on the CPU cache, a bound on the paged one.
  r["retention_bytes_formula"] = static_cast<uint64_t>(batch) * bytes.retention;
  const json kept =
      r["kv_memory"].value("kept_tokens", json::object()).value("per_layer", json::array());
  double modelled = 0;
  for (const json& k : kept) modelled += k.get<double>() * double(bytes.retention_per_held_token);
  const double retention_measured = r["kv_memory"].value("retention_bytes", 0.0);
  const bool retention_off = bytes.retention_exact
                                 ? std::abs(retention_measured - modelled) > 0.01 * modelled
                                 : retention_measured > modelled;
  if (retention_off) {
    out.warnings.push_back("capacity: the retention policy's bookkeeping measured " +
                           format_bytes(retention_measured) + " at batch " + std::to_string(batch) +
                           " where the formula says " + (bytes.retention_exact ? "" : "at most ") +
                           format_bytes(modelled) + " for the tokens held");
  }
  if (const std::string w = decode_spread_warning(r); !w.empty())
    out.warnings.push_back("capacity: " + w);
  summary["decode_tok_s"] = r["decode_tok_s"];
  out.records.push_back(r);
  return summary;
}

}  // namespace

void ThroughputSuite::check_params(const json& p) {
  check_listed_once(p, {"batch", "prompt_tokens", "new_tokens"});
  const int64_t context = p["capacity_context"], news = p["capacity_new_tokens"];
  if (context > 0 && context < news)
    throw ConfigError("capacity_context", "must be >= capacity_new_tokens (" +
                                              std::to_string(news) + ") when set, got " +
                                              std::to_string(context));
}

uint64_t ThroughputSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  uint64_t peak = 0;
  for (int64_t p : ctx.params["prompt_tokens"].get<std::vector<int64_t>>())
    for (int64_t n : ctx.params["new_tokens"].get<std::vector<int64_t>>()) {
      const double per_token = ctx.kv_bytes_per_token_at(p + n);
      for (int64_t b : ctx.params["batch"].get<std::vector<int64_t>>())
        peak = std::max(peak, generation_bytes(*ctx.model, per_token, b, p, n, ctx.weight_dtype));
    }
  const int64_t context = ctx.params["capacity_context"];
  if (context > 0) {
    // The capacity batch as the run chooses it (run_capacity: the sequences of the method's
    // formula that fit the budget, at most max_batch; none, and nothing runs, when not one
    // fits). Its KV stays within the budget.
    const int64_t n = ctx.params["capacity_new_tokens"];
    const int64_t prompt = std::max<int64_t>(context - n + 1, 1);
    // A budget that cannot be known (no memory left past the weights) fails the cell when it
    // runs; the estimate, which must not throw, keeps max_batch's bound.
    double budget = std::numeric_limits<double>::infinity();
    int64_t b = ctx.params["max_batch"];
    try {
      budget = capacity_budget(ctx.params, ctx.gpu ? at::kCUDA : at::kCPU,
                               model_weight_bytes(*ctx.model, ctx.weight_dtype),
                               /*once_per_run=*/false)
                   .bytes;
      const auto policy = make_policy(ctx.method);
      b = std::min(
          b, largest_batch(
                 budget,
                 sequence_kv_bytes(
                     *make_codec(ctx.method, ctx.kv_dtype), *policy, *ctx.model, prompt, context,
                     CacheLayout::for_method(ctx.method, ctx.kv_dtype, ctx.model->head_dim,
                                             ctx.paged, CacheLayout::kernel_path(ctx.gpu)))));
    } catch (const Error&) {
      // (The run fails this cell with the reason; the estimate keeps max_batch's bound.)
    }
    if (b > 0) {
      // Within the budget, which holds the shared state (added once below) too.
      const double kv =
          std::min(std::max(budget - static_cast<double>(ctx.shared_bytes), 0.0),
                   ctx.kv_bytes_per_token_at(context) * static_cast<double>(b) * double(context));
      peak = std::max(peak, generation_bytes(*ctx.model, 0, b, prompt, n, ctx.weight_dtype,
                                             /*prefill_group=*/1) +
                                static_cast<uint64_t>(kv));
    }
  }
  return model_weight_bytes(*ctx.model, ctx.weight_dtype) + ctx.shared_bytes + peak;
}

std::string decode_spread_warning(const json& r) {
  // A decode step's time should barely vary; a wide spread means other work took the cores
  // (or the step is bimodal), and the median alone would mislead.
  constexpr double kSpreadWarning = 3;  // p90 / median
  const json& step = r["decode_step_s"];
  const double spread = step["p90"].get<double>() / step["median"].get<double>();
  if (!(spread > kSpreadWarning)) return "";
  return "batch " + std::to_string(r["batch"].get<int64_t>()) + ", prompt " +
         std::to_string(r["prompt_tokens"].get<int64_t>()) + ", new " +
         std::to_string(r["new_tokens"].get<int64_t>()) + ": decode steps spread from " +
         format_fixed(step["min"].get<double>() * 1e3, 2) + " to " +
         format_fixed(step["max"].get<double>() * 1e3, 2) + " ms (p90 " + format_fixed(spread, 1) +
         "x the median): the machine was busy or the step is bimodal; the median may mislead";
}

CellOutput ThroughputSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  const auto batches = p["batch"].get<std::vector<int64_t>>();
  const auto prompts = p["prompt_tokens"].get<std::vector<int64_t>>();
  const auto news = p["new_tokens"].get<std::vector<int64_t>>();
  const int warmup = p["warmup"], repeats = p["repeats"];
  ctx.model.get();  // load before the memory check reads the model's dimensions
  // The capacity view's budget, read now: on the CPU, after the grid, memory its allocations
  // still hold would shrink it (a GPU's is its memory less the weights, read either way).
  const bool capacity = p["capacity_context"].get<int64_t>() > 0;
  const Budget budget = capacity ? capacity_budget(p, ctx.model.placement().device,
                                                   ctx.model.get().weight_bytes(), true)
                                 : Budget{};
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
    if (const std::string w = nominal_mismatch_warning(r["kv_memory"]); !w.empty())
      out.warnings.push_back("batch " + std::to_string(r["batch"].get<int64_t>()) + ": " + w);
    if (const std::string w = decode_spread_warning(r); !w.empty()) out.warnings.push_back(w);
    best_decode = std::max(best_decode, r["decode_tok_s"].get<double>());
    best_prefill = std::max(best_prefill, r["prefill_tok_s"].get<double>());
  }
  out.summary = {{"points", out.records.size()},
                 {"max_decode_tok_s", best_decode},
                 {"max_prefill_tok_s", best_prefill}};
  if (capacity) {
    std::shared_ptr<const Codec> codec = make_codec(ctx.method, ctx.model.kv_dtype());
    if (codec->needs_preparation()) codec = ctx.model.prepared_codec(ctx.method).codec;
    out.summary["capacity"] = run_capacity(ctx, *cache, *codec, budget, out);
  }
  // After the capacity view: a long capacity_context may evict where the grid's prompts do not.
  std::string nothing_evicted;  // set while no point has evicted
  for (size_t i = 0; i < out.records.size(); ++i) {
    const std::string w = nothing_evicted_warning(ctx.method, out.records[i]["kv_memory"]);
    if (w.empty()) break;
    if (i + 1 == out.records.size()) nothing_evicted = "at every point: " + w;
  }
  if (!nothing_evicted.empty()) out.warnings.push_back(nothing_evicted);
  return out;
}

namespace {
// The KV cache's share of a decode step in percent, "-" where the record has no phases.
std::string attend_percent(const json& record) {
  const json phases = record.value("phases", json());
  const json share = phases.is_object()
                         ? phases.value("decode_share", json::object()).value("attend", json())
                         : json();
  return share.is_number() ? format_fixed(share.get<double>() * 100, 1) : "-";
}
}  // namespace

Table ThroughputSuite::summary_table(const CellOutput& output) const {
  Table t;
  // retention %: the policy's share of prefill time / of decode time (SnapKV selects in the
  // prefill, H2O and TOVA in every decode step). attend %: the KV cache's share of a decode
  // step (its append and attention, the phases' split), "-" without a warmup generation.
  t.columns = {"batch",        "prompt",    "new",      "prefill tok/s",
               "decode tok/s", "ms/step",   "attend %", "retention % pre/dec",
               "KV bytes",     "bits/value"};
  for (const auto& r : output.records) {
    // The capacity record's row: "20 (capacity)", or "32 (capacity; fits 120)" when capped.
    std::string batch = std::to_string(r["batch"].get<int64_t>());
    if (r["kind"] == "capacity") {
      batch += r["capped"].get<bool>()
                   ? " (capacity; fits " + std::to_string(r["max_batch_fit"].get<int64_t>()) + ")"
                   : " (capacity)";
    }
    t.rows.push_back({batch, std::to_string(r["prompt_tokens"].get<int64_t>()),
                      std::to_string(r["new_tokens"].get<int64_t>()),
                      format_fixed(r["prefill_tok_s"].get<double>(), 1),
                      format_fixed(r["decode_tok_s"].get<double>(), 1),
                      format_fixed(r["decode_step_s"]["median"].get<double>() * 1e3, 2),
                      attend_percent(r),
                      format_fixed(r["retention"]["prefill_share"].get<double>() * 100, 1) + " / " +
                          format_fixed(r["retention"]["decode_share"].get<double>() * 100, 1),
                      format_bytes(r["kv_bytes"].get<double>()),
                      format_fixed(r["kv_memory"]["bits_per_value"].get<double>(), 2)});
  }
  return t;
}

}  // namespace kvbench
