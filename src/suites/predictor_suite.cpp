#include "kvbench/suites/predictor_suite.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"
#include "kvbench/core/text.h"
#include "kvbench/engine/generator.h"
#include "kvbench/serving/serving_loop.h"
#include "kvbench/suites/workload.h"

namespace kvbench {

using nlohmann::json;

std::vector<ParamSpec> PredictorSuite::param_specs() {
  return {
      ParamSpec::int_list("batch", json::array({1, 2, 4, 8}), "profile grid: batch sizes")
          .range(1, 4096),
      ParamSpec::int_list("context", json::array({64, 128, 256, 512}),
                          "profile grid: tokens each sequence holds before a timed decode step")
          .range(1, 1 << 20),
      ParamSpec::int_list("heldout_batch", "auto",
                          "held-out batches (inside the grid's range); auto = an integer "
                          "between each pair of neighbouring grid batches")
          .range(1, 4096)
          .or_auto(),
      ParamSpec::int_list("heldout_context", "auto",
                          "held-out contexts (inside the grid's range); auto = the rounded "
                          "geometric mean of each pair of neighbouring grid contexts")
          .range(1, 1 << 20)
          .or_auto(),
      ParamSpec::integer("steps", 4, "decode steps timed per generation").range(1, 10000),
      ParamSpec::integer("repeats", 6,
                         "timed generations per point (rounds over every point, interleaved); "
                         "a point's noise needs 6")
          .range(1, 100000),
      ParamSpec::integer("warmup", 1, "untimed rounds over every point first").range(0, 1000),
      ParamSpec::string("statistic", "median",
                        "a point's step time from its samples: median (of every timed step), "
                        "or min (the uncontended time: robust on a shared, loaded machine)",
                        {"median", "min"}),
      ParamSpec::string(
          "model", "bilinear",
          "the interpolator reported as accuracy_mean/accuracy_min and used for routing",
          {"bilinear", "least_squares"}),
      ParamSpec::integer("routing_requests", 400,
                         "routing simulation: requests (0 = no routing simulation)")
          .range(0, 10000000),
      ParamSpec::integer("routing_replicas", 4, "routing simulation: replicas").range(1, 4096),
      ParamSpec::number("routing_rate", 0.0,
                        "routing simulation: Poisson arrival rate (requests/s); 0 = "
                        "routing_load x the replicas' estimated saturation rate")
          .range(0, 1e9),
      ParamSpec::number("routing_load", 0.8,
                        "routing simulation: offered load as a fraction of the estimated "
                        "saturation rate, when routing_rate is 0")
          .range(1e-3, 100),
      ParamSpec::integer("routing_max_batch", 0,
                         "routing simulation: sequences a replica runs at once (0 = the "
                         "largest grid batch)")
          .range(0, 1 << 20),
      ParamSpec::integer("routing_prompt_tokens_min", 64, "routing: shortest prompt (uniform)")
          .range(1, 1 << 20),
      ParamSpec::integer("routing_prompt_tokens_max", 256, "routing: longest prompt (uniform)")
          .range(1, 1 << 20),
      ParamSpec::integer("routing_output_tokens_min", 8, "routing: fewest output tokens (uniform)")
          .range(1, 1 << 20),
      ParamSpec::integer("routing_output_tokens_max", 256, "routing: most output tokens (uniform)")
          .range(1, 1 << 20),
  };
}

double PredictedStepCost::step_s(const std::vector<int64_t>& decode_contexts,
                                 const std::vector<int64_t>& prefill_prompts) const {
  double t = 0;
  if (!decode_contexts.empty()) {
    double sum = 0;
    for (int64_t c : decode_contexts) sum += static_cast<double>(c);
    const double b = static_cast<double>(decode_contexts.size());
    t += std::max(decode_.predict(b, sum / b), 1e-6);
  }
  if (!prefill_prompts.empty()) {
    double s1 = 0, s2 = 0;
    for (int64_t p : prefill_prompts) {
      s1 += static_cast<double>(p);
      s2 += static_cast<double>(p) * static_cast<double>(p);
    }
    t += std::max(prefill_[0] + prefill_[1] * s1 + prefill_[2] * s2, 1e-6);
  }
  return t;
}

namespace {

struct Point {
  int64_t batch = 0, context = 0;
  bool heldout = false;
  std::vector<double> steps, prefills;
  size_t per_generation = 1;  // decode steps one timed generation gave
};

double point_time(const std::vector<double>& x, const std::string& statistic) {
  return statistic == "min" ? *std::min_element(x.begin(), x.end()) : median(x);
}

// How well a point's time is determined: the half-width of the 95% bootstrap interval of the
// median of its steps, relative to the median. Measurement noise of the machine, beside which the
// predictor's accuracy must be read.
// Null below kMinUnitsForMedianCi generations, which give no 95% interval (stats.h).
json relative_ci(const Summary& s) {
  if (!s.has_median_ci) return nullptr;
  return s.median > 0 ? (s.median_ci95.high - s.median_ci95.low) / (2 * s.median) : 0;
}

std::vector<int64_t> sorted_unique(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

// Held-out coordinates of one axis: given, or midpoints (the grid's own values when it has no
// integer between neighbours, so the other axis keeps the points off the grid).
std::vector<int64_t> heldout_axis(const json& given, const std::vector<int64_t>& grid,
                                  const std::string& key) {
  std::vector<int64_t> v;
  if (given == "auto") {
    v = midpoints_between(grid);
    if (v.empty()) v = grid;
  } else {
    v = sorted_unique(given.get<std::vector<int64_t>>());
  }
  for (int64_t x : v) {
    if (x < grid.front() || x > grid.back()) {
      throw ConfigError(key, std::to_string(x) + " lies outside the grid's range [" +
                                 std::to_string(grid.front()) + ", " + std::to_string(grid.back()) +
                                 "]; held-out points must be inside it");
    }
  }
  return v;
}

json accuracy_summary(const std::vector<double>& acc) {
  if (acc.empty()) return {{"points", 0}};
  return {{"points", acc.size()},
          {"mean", mean(acc)},
          {"min", *std::min_element(acc.begin(), acc.end())},
          {"median", median(acc)}};
}

json latency_json(const std::vector<double>& x) {
  return {{"mean", mean(x)},
          {"p50", percentile(x, 50)},
          {"p90", percentile(x, 90)},
          {"p99", percentile(x, 99)},
          {"max", *std::max_element(x.begin(), x.end())}};
}

}  // namespace

uint64_t PredictorSuite::estimate_bytes(const EstimateContext& ctx) const {
  if (!ctx.model) return 0;
  const auto b = ctx.params["batch"].get<std::vector<int64_t>>();
  const auto c = ctx.params["context"].get<std::vector<int64_t>>();
  const int64_t steps = ctx.params["steps"];
  // Per token at the most expensive context (paged: the shortest, whose rings weigh most).
  double per_token = ctx.kv_bytes_per_token;
  for (int64_t context : c)
    per_token = std::max(per_token, ctx.kv_bytes_per_token_at(context + steps + 1));
  return model_weight_bytes(*ctx.model, ctx.weight_dtype) + ctx.shared_bytes +
         generation_bytes(*ctx.model, per_token, *std::max_element(b.begin(), b.end()),
                          *std::max_element(c.begin(), c.end()), steps + 1);
}

namespace {

// The profile's points: the grid's, then the held-out ones off it.
std::vector<Point> profile_points(const json& p) {
  const std::vector<int64_t> batches = sorted_unique(p["batch"].get<std::vector<int64_t>>());
  const std::vector<int64_t> contexts = sorted_unique(p["context"].get<std::vector<int64_t>>());
  if (batches.size() < 2) throw ConfigError("batch", "the grid needs at least two batches");
  if (contexts.size() < 2) throw ConfigError("context", "the grid needs at least two contexts");
  const std::vector<int64_t> hb = heldout_axis(p["heldout_batch"], batches, "heldout_batch");
  const std::vector<int64_t> hc = heldout_axis(p["heldout_context"], contexts, "heldout_context");
  std::vector<Point> points;
  for (int64_t b : batches)
    for (int64_t c : contexts) points.push_back({b, c, false, {}, {}});
  for (int64_t b : hb) {
    for (int64_t c : hc) {
      const bool on_grid = std::binary_search(batches.begin(), batches.end(), b) &&
                           std::binary_search(contexts.begin(), contexts.end(), c);
      if (!on_grid) points.push_back({b, c, true, {}, {}});
    }
  }
  if (std::none_of(points.begin(), points.end(), [](const Point& q) { return q.heldout; })) {
    throw ConfigError("heldout_batch",
                      "every held-out (batch, context) is a grid point; give held-out values "
                      "between the grid's");
  }
  return points;
}

}  // namespace

void PredictorSuite::check_params(const json& p) {
  profile_points(p);
  for (const char* what : {"prompt", "output"}) {  // the routing's uniform length ranges
    const std::string lo = std::string("routing_") + what + "_tokens_min",
                      hi = std::string("routing_") + what + "_tokens_max";
    if (p[lo].get<int64_t>() > p[hi].get<int64_t>())
      throw ConfigError(hi, "must be >= " + lo + " (" + std::to_string(p[lo].get<int64_t>()) + ")");
  }
}

CellOutput PredictorSuite::run(const CellContext& ctx) {
  const json& p = ctx.params;
  check_params(p);
  std::vector<Point> points = profile_points(p);
  const std::vector<int64_t> batches = sorted_unique(p["batch"].get<std::vector<int64_t>>());
  const std::vector<int64_t> contexts = sorted_unique(p["context"].get<std::vector<int64_t>>());
  const std::vector<int64_t> hb = heldout_axis(p["heldout_batch"], batches, "heldout_batch");
  const std::vector<int64_t> hc = heldout_axis(p["heldout_context"], contexts, "heldout_context");
  const int64_t steps = p["steps"];
  const int repeats = p["repeats"], warmup = p["warmup"];

  const Transformer& model = ctx.model.get();
  check_generation_fits(ctx, std::max(batches.back(), hb.back()),
                        std::max(contexts.back(), hc.back()), steps + 1, "predictor");
  auto cache = make_cell_cache(ctx);
  GenerationConfig g;
  g.max_new_tokens = steps + 1;
  g.ignore_eos = true;

  // Rounds over every point, so slow drift of the machine spreads over all of them.
  ctx.progress.begin(ctx.cell_id, static_cast<size_t>(warmup + repeats) * points.size());
  for (int r = 0; r < warmup + repeats; ++r) {
    for (size_t i = 0; i < points.size(); ++i) {
      Point& pt = points[i];
      // Seeded by the run, not the cell: every method times the same ids.
      auto prompts = synthetic_prompts(pt.batch, pt.context, model.config().vocab_size,
                                       ctx.spec.seed + static_cast<uint64_t>(r * 7919 + i));
      GenerationResult res = generate(model, *cache, prompts, g);
      if (r >= warmup) {
        pt.per_generation = res.decode_step_s.size();
        pt.steps.insert(pt.steps.end(), res.decode_step_s.begin(), res.decode_step_s.end());
        pt.prefills.push_back(res.prefill_s);
      }
      ctx.progress.advance("batch " + std::to_string(pt.batch) + ", context " +
                           std::to_string(pt.context));
    }
  }
  ctx.progress.end();

  const std::string statistic = p["statistic"];
  // A point's decode steps hold context, context + 1, ... context + steps - 1 tokens before
  // their own (the router's context: prompt + generated - 1): its time is that of their mean
  // context, at which the decode fits place it (at steps 1000 from context 64, ~564, not 64).
  // With statistic "min" the fastest step stands for the point, which is likely an early one:
  // placed at context.
  const double offset = statistic == "min" ? 0.0 : 0.5 * static_cast<double>(steps - 1);
  std::vector<StepSample> grid;
  std::vector<std::vector<double>> prefill_x;
  std::vector<double> prefill_y;
  for (const Point& pt : points) {
    if (pt.heldout) continue;
    grid.push_back({static_cast<double>(pt.batch), static_cast<double>(pt.context) + offset,
                    point_time(pt.steps, statistic)});
    const double b = static_cast<double>(pt.batch), c = static_cast<double>(pt.context);
    prefill_x.push_back({1.0, b * c, b * c * c});
    prefill_y.push_back(point_time(pt.prefills, statistic));
  }
  const BilinearStepModel bilinear(grid);
  const LeastSquaresStepModel lsq(grid);
  const std::vector<double> prefill_w = least_squares(prefill_x, prefill_y);
  const StepTimeModel& chosen =
      p["model"] == "bilinear" ? static_cast<const StepTimeModel&>(bilinear) : lsq;

  CellOutput out;
  std::vector<double> acc_bilinear, acc_lsq, acc_prefill, spreads;
  for (const Point& pt : points) {
    const double b = static_cast<double>(pt.batch), c = static_cast<double>(pt.context);
    const double measured = point_time(pt.steps, statistic);
    const double prefill = point_time(pt.prefills, statistic);
    // A generation's steps share its batch and context: resampled as one unit.
    const Summary stats = summarize(pt.steps, ctx.seed, pt.per_generation);
    const json spread = relative_ci(stats);
    if (!spread.is_null()) spreads.push_back(spread);
    const double pb = bilinear.predict(b, c + offset), pl = lsq.predict(b, c + offset);
    const double pp = prefill_w[0] + prefill_w[1] * b * c + prefill_w[2] * b * c * c;
    json rec = {{"kind", "step_profile"},
                {"role", pt.heldout ? "heldout" : "grid"},
                {"batch", pt.batch},
                {"context", pt.context},
                {"mean_context", c + offset},
                {"samples_s", pt.steps},
                {"samples_per_generation", pt.per_generation},
                {"time_s", to_json(stats)},
                {"step_s", measured},
                {"relative_ci95", spread},
                {"decode_tok_s", b / measured},
                {"prefill_samples_s", pt.prefills},
                {"prefill_s", prefill},
                {"predicted_s", {{"bilinear", pb}, {"least_squares", pl}, {"prefill", pp}}},
                {"accuracy",
                 {{"bilinear", prediction_accuracy(pb, measured)},
                  {"least_squares", prediction_accuracy(pl, measured)},
                  {"prefill", prediction_accuracy(pp, prefill)}}}};
    if (pt.heldout) {
      acc_bilinear.push_back(rec["accuracy"]["bilinear"]);
      acc_lsq.push_back(rec["accuracy"]["least_squares"]);
      acc_prefill.push_back(rec["accuracy"]["prefill"]);
    }
    out.records.push_back(rec);
  }
  const json acc_b = accuracy_summary(acc_bilinear), acc_l = accuracy_summary(acc_lsq);
  const json& acc_chosen = p["model"] == "bilinear" ? acc_b : acc_l;
  json heldout_points = json::array();
  for (const Point& pt : points) {
    if (pt.heldout) heldout_points.push_back({pt.batch, pt.context});
  }
  // The machine's noise: null when no point had the 6 generations a 95% interval needs.
  const json noise = spreads.empty() ? json() : json(median(spreads));
  out.summary = {
      {"grid", {{"batch", batches}, {"context", contexts}}},
      {"heldout_points", heldout_points},
      {"steps", steps},
      {"repeats", repeats},
      {"statistic", statistic},
      {"noise", noise},
      {"noise_max",
       spreads.empty() ? json() : json(*std::max_element(spreads.begin(), spreads.end()))},
      {"model", p["model"]},
      {"accuracy_mean", acc_chosen["mean"]},
      {"accuracy_min", acc_chosen["min"]},
      {"models",
       {{"bilinear", {{"heldout_accuracy", acc_b}, {"fit", bilinear.to_json()}}},
        {"least_squares", {{"heldout_accuracy", acc_l}, {"fit", lsq.to_json()}}}}},
      {"prefill",
       {{"formula", "a + b*batch*context + c*batch*context^2"},
        {"a", prefill_w[0]},
        {"b", prefill_w[1]},
        {"c", prefill_w[2]},
        {"heldout_accuracy", accuracy_summary(acc_prefill)}}}};
  if (acc_chosen["mean"].get<double>() < 0.85) {
    out.warnings.push_back(
        "held-out accuracy of the " + p["model"].get<std::string>() + " predictor is " +
        format_fixed(100 * acc_chosen["mean"].get<double>(), 1) +
        "% (below 85%) with a measurement noise of " +
        (noise.is_null() ? std::string("? (fewer than 6 generations per point)")
                         : format_fixed(100 * noise.get<double>(), 1) + "%") +
        " (median relative 95% interval of a point's time): a loaded machine (try "
        "statistic min), or a grid too coarse for the method");
  }

  const int64_t nreq = p["routing_requests"];
  if (nreq == 0) return out;
  // Routing: the same seeded requests for every method (run seed, not cell seed).
  const int64_t pmin = p["routing_prompt_tokens_min"], pmax = p["routing_prompt_tokens_max"];
  const int64_t omin = p["routing_output_tokens_min"], omax = p["routing_output_tokens_max"];
  const int64_t max_batch = p["routing_max_batch"].get<int64_t>() > 0
                                ? p["routing_max_batch"].get<int64_t>()
                                : batches.back();
  const int64_t replicas = p["routing_replicas"];
  // The fits hold inside the profiled grid; past it, above or below, the router's step costs
  // are extrapolations (a replica's batch runs from 1; a request's decode context from its
  // prompt; a negative extrapolation is floored at 1 us, a free step).
  const int64_t longest = pmax + omax - 1;  // the context of a longest request's last step
  std::vector<std::string> past;
  if (max_batch > batches.back())
    past.push_back("batches up to " + std::to_string(max_batch) + ", grid to " +
                   std::to_string(batches.back()));
  if (batches.front() > 1)
    past.push_back("batches from 1, grid from " + std::to_string(batches.front()));
  // The fits' contexts are the points' mean contexts (offset above); below the lowest, a
  // tenth of it is let pass (the defaults' 1.5 tokens below 65.5 are not an extrapolation
  // worth a warning; steps 1000 from 64, 500 tokens below 563.5, is).
  const double fit_low = static_cast<double>(contexts.front()) + offset,
               fit_high = static_cast<double>(contexts.back()) + offset;
  auto shown = [](double c) {
    return c == std::floor(c) ? std::to_string(static_cast<int64_t>(c)) : format_fixed(c, 1);
  };
  if (static_cast<double>(longest) > fit_high)
    past.push_back("contexts up to " + std::to_string(longest) + ", grid to " + shown(fit_high));
  if (fit_low - static_cast<double>(pmin) > 0.1 * fit_low)
    past.push_back("contexts from " + std::to_string(pmin) + ", grid from " + shown(fit_low));
  if (!past.empty()) {
    out.warnings.push_back("routing goes past the profiled grid (" + join(past, "; ") +
                           "): its step costs there are the predictor's extrapolations; widen "
                           "the grid or narrow routing_max_batch and the routing lengths");
  }
  const PredictedStepCost cost(chosen, prefill_w);
  const double mean_prompt = 0.5 * static_cast<double>(pmin + pmax);
  const double mean_output = 0.5 * static_cast<double>(omin + omax);
  // Saturation estimate: a replica running full batches of average requests. The prefill
  // makes a request's first token, so it decodes mean_output - 1 steps, at contexts from its
  // prompt to prompt + mean_output - 2.
  const double decode_steps = std::max(mean_output - 1, 0.0);
  const double batch_s =
      decode_steps * std::max(chosen.predict(static_cast<double>(max_batch),
                                             mean_prompt + 0.5 * (decode_steps - 1)),
                              1e-6) +
      cost.step_s({}, std::vector<int64_t>(static_cast<size_t>(max_batch),
                                           static_cast<int64_t>(std::llround(mean_prompt))));
  const double saturation = static_cast<double>(replicas * max_batch) / batch_s;
  const bool rate_given = p["routing_rate"].get<double>() > 0;
  const double rate =
      rate_given ? p["routing_rate"].get<double>() : p["routing_load"].get<double>() * saturation;
  Rng rng(ctx.spec.seed ^ 0x7017e5eedull);
  const std::vector<double> arrivals = poisson_arrivals(nreq, rate, ctx.spec.seed + 2);
  std::vector<RoutedRequest> reqs;
  for (int64_t i = 0; i < nreq; ++i) {
    const int64_t pr =
        pmin + static_cast<int64_t>(rng.below(static_cast<uint64_t>(pmax - pmin + 1)));
    const int64_t o =
        omin + static_cast<int64_t>(rng.below(static_cast<uint64_t>(omax - omin + 1)));
    reqs.push_back({i, arrivals[static_cast<size_t>(i)], pr, o});
  }
  struct Variant {
    const char* name;
    RoutingPolicy policy;
    double assumed;
  };
  const Variant variants[] = {
      {"round_robin", RoutingPolicy::kRoundRobin, 0},
      {"least_predicted", RoutingPolicy::kLeastPredicted, 0},
      {"least_predicted_mean_length", RoutingPolicy::kLeastPredicted, mean_output}};
  json policies = json::object();
  for (const Variant& v : variants) {
    RoutingConfig rc;
    rc.replicas = replicas;
    rc.max_batch = max_batch;
    rc.policy = v.policy;
    rc.assumed_output_tokens = v.assumed;
    const RoutingResult res = simulate_routing(reqs, rc, cost);
    std::vector<int64_t> per_replica(static_cast<size_t>(replicas), 0);
    for (int64_t r : res.replica) ++per_replica[static_cast<size_t>(r)];
    const json e2e = latency_json(res.e2e_s), ttft = latency_json(res.ttft_s);
    out.records.push_back(
        {{"kind", "routing"},
         {"policy", v.name},
         {"router_output_tokens", v.assumed > 0 ? json(v.assumed) : json("known")},
         {"replicas", replicas},
         {"max_batch", max_batch},
         {"rate", rate},
         {"rate_source", rate_given ? "routing_rate" : "routing_load"},
         {"requests", nreq},
         {"samples_s", res.e2e_s},
         {"e2e_s", e2e},
         {"ttft_s", ttft},
         {"requests_per_replica", per_replica},
         {"duration_s", res.end_s},
         {"steps", res.steps}});
    policies[v.name] = {{"e2e_mean_s", e2e["mean"]}, {"e2e_p99_s", e2e["p99"]}};
  }
  const double rr_mean = policies["round_robin"]["e2e_mean_s"];
  const double rr_p99 = policies["round_robin"]["e2e_p99_s"];
  out.summary["routing"] = {
      {"replicas", replicas},
      {"max_batch", max_batch},
      {"rate", rate},
      {"saturation_rate_estimate", saturation},
      {"requests", nreq},
      {"step_model", chosen.name()},
      {"policies", policies},
      {"mean_speedup", rr_mean / policies["least_predicted"]["e2e_mean_s"].get<double>()},
      {"p99_speedup", rr_p99 / policies["least_predicted"]["e2e_p99_s"].get<double>()},
      {"mean_speedup_mean_length",
       rr_mean / policies["least_predicted_mean_length"]["e2e_mean_s"].get<double>()}};
  return out;
}

Table PredictorSuite::summary_table(const CellOutput& output) const {
  Table t;
  t.columns = {"role",        "batch",  "context",      "ms/step",
               "bilinear ms", "lsq ms", "acc bilinear", "acc lsq"};
  for (const auto& r : output.records) {
    if (r["kind"] != "step_profile") continue;
    t.rows.push_back({r["role"].get<std::string>(), std::to_string(r["batch"].get<int64_t>()),
                      std::to_string(r["context"].get<int64_t>()),
                      format_fixed(r["step_s"].get<double>() * 1e3, 3),
                      format_fixed(r["predicted_s"]["bilinear"].get<double>() * 1e3, 3),
                      format_fixed(r["predicted_s"]["least_squares"].get<double>() * 1e3, 3),
                      format_fixed(100 * r["accuracy"]["bilinear"].get<double>(), 1) + "%",
                      format_fixed(100 * r["accuracy"]["least_squares"].get<double>(), 1) + "%"});
  }
  for (const auto& r : output.records) {
    if (r["kind"] != "routing") continue;
    t.rows.push_back({"routing " + r["policy"].get<std::string>(), "", "",
                      "e2e mean " + format_fixed(r["e2e_s"]["mean"].get<double>(), 3) + " s", "",
                      "p99 " + format_fixed(r["e2e_s"]["p99"].get<double>(), 3) + " s", "", ""});
  }
  return t;
}

}  // namespace kvbench
