// `kvbench compare` on small hand-built reports and on real serving output, and the bootstrap
// interval of a difference of medians it rests on (checked by hand on degenerate samples).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"
#include "kvbench/report/compare.h"
#include "kvbench/suites/serving_suite.h"
#include "kvbench/suites/suite_registry.h"
#include "suite_harness.h"

namespace kvbench {
namespace {

using json = nlohmann::json;

TEST(Stats, BootstrapMedianChangeByHand) {
  // Constant samples: every resample's change is 3 / 1 - 1.
  const Interval constant = bootstrap_median_change_ci({1, 1, 1}, {3, 3, 3});
  EXPECT_DOUBLE_EQ(constant.low, 2.0);
  EXPECT_DOUBLE_EQ(constant.high, 2.0);
  // Baseline {1, 2}: resample medians 1, 1.5, 2 with probabilities 1/4, 1/2, 1/4; candidate {4}
  // always 4. Changes 3, 5/3, 1, so the 2.5th and 97.5th percentiles are 1 and 3.
  const Interval pair = bootstrap_median_change_ci({1, 2}, {4});
  EXPECT_DOUBLE_EQ(pair.low, 1.0);
  EXPECT_DOUBLE_EQ(pair.high, 3.0);
  // Seeded: the same seed gives the same interval, and it contains the observed change 5/4 - 1.
  const std::vector<double> a = {1, 2, 3, 4, 5, 6, 7}, b = {2, 3, 4, 5, 6, 7, 9};
  const Interval x = bootstrap_median_change_ci(a, b, 0.95, 2000, 5);
  const Interval y = bootstrap_median_change_ci(a, b, 0.95, 2000, 5);
  EXPECT_EQ(x.low, y.low);
  EXPECT_EQ(x.high, y.high);
  EXPECT_LE(x.low, 0.25);
  EXPECT_GE(x.high, 0.25);
  EXPECT_THROW(bootstrap_median_change_ci({}, {1}), Error);
  EXPECT_THROW(bootstrap_median_change_ci({0, 1}, {1}), Error);
}

// Several runs a side: the first stage draws runs, the second their blocks. Baseline runs
// {1, 1} and {3, 3} (each constant) and a candidate of one run {2, 2}: a round draws AA, AB or
// BB with probabilities 1/4, 1/2, 1/4, so the pooled baseline median is 1, 2 or 3 and the
// change 1, 0 or -1/3; the 2.5th and 97.5th percentiles are -1/3 and 1. One run a side gives
// exactly the single-list interval.
TEST(Stats, BootstrapMedianChangeOverRunsByHand) {
  const Interval runs = bootstrap_median_change_ci_runs({{{1, 1}}, {{3, 3}}}, {{{2, 2}}});
  EXPECT_DOUBLE_EQ(runs.low, -1.0 / 3);
  EXPECT_DOUBLE_EQ(runs.high, 1.0);
  // One run a side draws exactly what the single-list interval drew before runs existed: the
  // values the code of 3c7f212 gave (seed 3, 500 rounds), for blocks of 1, 2 and 4.
  const std::vector<double> a = {1, 2, 3, 4, 5, 6, 7, 8}, b = {2, 3, 4, 5, 6, 7, 9, 9};
  const std::map<size_t, Interval> before = {{1, {-0.33333333333333337, 1.9049999999999954}},
                                             {2, {-0.46153846153846156, 2.2000000000000002}},
                                             {4, {-0.46153846153846156, 2.2000000000000002}}};
  for (const auto& [block, want] : before) {
    const Interval one = bootstrap_median_change_ci_runs({{a, block}}, {{b, block}}, 0.95, 500, 3);
    const Interval list = bootstrap_median_change_ci(a, b, 0.95, 500, 3, block, block);
    // (within 4 ulps: a compiler may fuse percentile()'s interpolation into one FMA)
    EXPECT_DOUBLE_EQ(one.low, want.low) << block;
    EXPECT_DOUBLE_EQ(one.high, want.high) << block;
    EXPECT_EQ(list.low, one.low) << block;
    EXPECT_EQ(list.high, one.high) << block;
  }
  EXPECT_THROW(bootstrap_median_change_ci_runs({}, {{{1}}}), Error);
  EXPECT_THROW(bootstrap_median_change_ci_runs({{{1}}, {{}}}, {{{1}}}), Error);
  EXPECT_THROW(bootstrap_median_change_ci_runs({{{1, 0}}}, {{{1}}}), Error);
  EXPECT_THROW(bootstrap_median_change_ci_runs({{{1, 2, 3}, 2}}, {{{1}}}), Error);
}

// Moving blocks (served requests): block 1 draws exactly what independent draws do; a block
// need not divide the run; and on coupled series (AR(1), phi 0.8: the spread of a mean is 3x
// the independent one's) the interval covers a zero change far more often than independent
// draws, whose interval is too narrow.
TEST(Stats, MovingBlocksCoverCoupledSeries) {
  EXPECT_EQ(moving_block_length(1), 1u);
  EXPECT_EQ(moving_block_length(32), 3u);
  EXPECT_EQ(moving_block_length(200), 6u);
  const std::vector<double> a = {1, 2, 3, 4, 5, 6, 7, 8}, b = {2, 3, 4, 5, 6, 7, 9, 9};
  const Interval iid = bootstrap_median_change_ci_runs({{a, 1}}, {{b, 1}}, 0.95, 500, 3);
  const Interval one =
      bootstrap_median_change_ci_runs({{a, 1, true}}, {{b, 1, true}}, 0.95, 500, 3);
  EXPECT_EQ(one.low, iid.low);
  EXPECT_EQ(one.high, iid.high);
  EXPECT_NO_THROW(bootstrap_median_change_ci_runs({{a, 3, true}}, {{b, 3, true}}));
  EXPECT_THROW(bootstrap_median_change_ci_runs({{a, 3}}, {{b, 3}}), Error);
  Rng rng(11);
  const auto coupled = [&rng](size_t n) {
    std::vector<double> x(n);
    double v = 0;
    for (double& e : x) {
      // Uniform noise of variance 1/12 per step; the series' stationary spread is 1/sqrt(0.36)
      // times that.
      v = 0.8 * v + (rng.uniform() - 0.5);
      e = 10 + v;
    }
    return x;
  };
  const size_t n = 216, trials = 200;
  int covered_iid = 0, covered_moving = 0, wider = 0;
  for (size_t t = 0; t < trials; ++t) {
    const std::vector<double> x = coupled(n), y = coupled(n);
    const size_t block = moving_block_length(n);
    const Interval i = bootstrap_median_change_ci_runs({{x, 1}}, {{y, 1}}, 0.95, 400, t);
    const Interval m =
        bootstrap_median_change_ci_runs({{x, block, true}}, {{y, block, true}}, 0.95, 400, t);
    covered_iid += i.low <= 0 && 0 <= i.high;
    covered_moving += m.low <= 0 && 0 <= m.high;
    wider += m.high - m.low > i.high - i.low;
  }
  EXPECT_GT(wider, 0.9 * trials) << wider;
  EXPECT_LT(covered_iid, 0.75 * trials) << covered_iid;
  EXPECT_GT(covered_moving, 0.7 * trials) << covered_moving;
  EXPECT_GT(covered_moving - covered_iid, 0.15 * trials) << covered_moving << " " << covered_iid;
}

json report(std::vector<json> cells) {
  return {{"schema", "kvbench.report"},
          {"schema_version", 2},
          {"config", json::object()},
          {"cells", cells}};
}

std::vector<double> scaled(const std::vector<double>& x, double factor) {
  std::vector<double> out;
  for (double v : x) out.push_back(v * factor);
  return out;
}

// Twenty TPOT samples around 10 ms with +-1% jitter.
const std::vector<double> kTight = {0.0100, 0.0101, 0.0099, 0.0100, 0.0102, 0.0098, 0.0100,
                                    0.0101, 0.0099, 0.0100, 0.0100, 0.0101, 0.0099, 0.0100,
                                    0.0102, 0.0098, 0.0100, 0.0101, 0.0099, 0.0100};

json latency_cell(const std::string& id, const std::vector<double>& tpot, int64_t kv_bytes = 1000) {
  json records = json::array();
  for (const char* kind : {"ttft", "tpot", "itl", "e2e"}) {
    records.push_back({{"kind", kind}, {"samples_s", kind == std::string("tpot") ? tpot : kTight}});
  }
  return {{"id", id},
          {"suite", "latency"},
          {"method", {{"name", "int4"}}},
          {"params", {{"prompt_tokens", 16}}},
          {"status", "ok"},
          {"records", records},
          {"summary", {{"kv_bytes_peak", kv_bytes}}}};
}

json fidelity_cell(const std::string& id, double kl) {
  return {{"id", id},
          {"suite", "fidelity"},
          {"method", {{"name", "full"}}},
          {"params", {{"windows", 1}}},
          {"status", "ok"},
          {"records", json::array()},
          {"summary", {{"kl_mean", kl}, {"top1_agreement", 1.0}, {"ppl_ratio", 1.0}}}};
}

const MetricComparison& find(const CompareResult& r, const std::string& metric) {
  for (const MetricComparison& c : r.comparisons) {
    if (c.metric == metric) return c;
  }
  throw std::runtime_error("no comparison of " + metric);
}

CompareOptions defaults(const std::vector<std::string>& args = {}) {
  CompareOptions o;
  o.thresholds = parse_thresholds(args);
  return o;
}

TEST(Compare, TimingRegressionIsCaught) {
  const CompareResult r =
      compare_reports(report({latency_cell("l.a", kTight)}),
                      report({latency_cell("l.a", scaled(kTight, 1.2))}), defaults());
  const MetricComparison& tpot = find(r, "tpot");
  EXPECT_TRUE(tpot.regressed);
  EXPECT_NEAR(tpot.change, 0.2, 1e-9);
  EXPECT_GT(tpot.change_ci.low, 0.05);  // the whole interval beyond the 5% default
  EXPECT_FALSE(find(r, "ttft").regressed);
  EXPECT_EQ(r.regressions(), 1u);
}

TEST(Compare, ChangeWithinThresholdPasses) {
  const CompareResult r =
      compare_reports(report({latency_cell("l.a", kTight)}),
                      report({latency_cell("l.a", scaled(kTight, 1.02))}), defaults());
  EXPECT_FALSE(find(r, "tpot").regressed);
  EXPECT_EQ(r.regressions(), 0u);
  // The same 20% slow-down passes under a 30% threshold, and is not checked when off.
  const json base = report({latency_cell("l.a", kTight)});
  const json slow = report({latency_cell("l.a", scaled(kTight, 1.2))});
  EXPECT_EQ(compare_reports(base, slow, defaults({"tpot=30"})).regressions(), 0u);
  const CompareResult off = compare_reports(base, slow, defaults({"tpot=off"}));
  EXPECT_EQ(off.regressions(), 0u);
  for (const MetricComparison& c : off.comparisons) EXPECT_NE(c.metric, "tpot");
}

TEST(Compare, NoisySampleStraddlingTheThresholdPasses) {
  // Median 5.5 -> 6.1 (+10.9%, beyond 5%), but samples spread over 1..10: the interval of the
  // difference reaches well below +5%, so this is not called a regression.
  const std::vector<double> noisy = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  std::vector<double> shifted;
  for (double v : noisy) shifted.push_back(v + 0.6);
  const CompareResult r = compare_reports(report({latency_cell("l.a", noisy)}),
                                          report({latency_cell("l.a", shifted)}), defaults());
  const MetricComparison& tpot = find(r, "tpot");
  EXPECT_GT(tpot.change, 0.05);
  EXPECT_LT(tpot.change_ci.low, 0.05);
  EXPECT_GT(tpot.change_ci.high, 0.05);
  EXPECT_FALSE(tpot.regressed);
  EXPECT_EQ(r.regressions(), 0u);
}

TEST(Compare, PointMetricsAgainstThresholds) {
  // KV bytes +2% beyond the 1% default; KL 0 -> 0 is no change; 0 -> 1e-7 is under the floor.
  const CompareResult r = compare_reports(
      report({latency_cell("l.a", kTight, 1000), fidelity_cell("f.a", 0)}),
      report({latency_cell("l.a", kTight, 1020), fidelity_cell("f.a", 0)}), defaults());
  EXPECT_TRUE(find(r, "kv_bytes").regressed);
  EXPECT_NEAR(find(r, "kv_bytes").change, 0.02, 1e-12);
  EXPECT_FALSE(find(r, "kl_mean").regressed);
  const CompareResult tiny = compare_reports(report({fidelity_cell("f.a", 0)}),
                                             report({fidelity_cell("f.a", 1e-7)}), defaults());
  EXPECT_FALSE(find(tiny, "kl_mean").regressed);
  const CompareResult worse = compare_reports(report({fidelity_cell("f.a", 0.01)}),
                                              report({fidelity_cell("f.a", 0.013)}), defaults());
  EXPECT_TRUE(find(worse, "kl_mean").regressed);  // +30% > 20%
}

TEST(Compare, DecodeTokensPerSecondRegressesWhenStepsSlowDown) {
  auto cell = [](const std::vector<double>& steps) {
    return json{{"id", "t.a"},
                {"suite", "throughput"},
                {"method", {{"name", "full"}}},
                {"params", json::object()},
                {"status", "ok"},
                {"summary", json::object()},
                {"records",
                 {{{"kind", "throughput"},
                   {"batch", 4},
                   {"prompt_tokens", 16},
                   {"new_tokens", 4},
                   {"samples_s", steps},
                   {"prefill_samples_s", kTight},
                   {"kv_bytes", 100}}}}};
  };
  const CompareResult r =
      compare_reports(report({cell(kTight)}), report({cell(scaled(kTight, 1.25))}), defaults());
  const MetricComparison& d = find(r, "decode_tok_s");
  EXPECT_EQ(d.point, "batch=4 prompt_tokens=16 new_tokens=4");
  EXPECT_NEAR(d.baseline, 400.0, 1e-9);  // 4 / 0.01
  EXPECT_NEAR(d.change, 1 / 1.25 - 1, 1e-9);
  EXPECT_LT(d.change_ci.high, -0.05);
  EXPECT_TRUE(d.regressed);
  EXPECT_FALSE(find(r, "prefill_tok_s").regressed);
}

json throughput_cell(const std::vector<double>& steps, json per_generation = json()) {
  json record = {{"kind", "throughput"}, {"batch", 4},         {"prompt_tokens", 16},
                 {"new_tokens", 4},      {"samples_s", steps}, {"prefill_samples_s", kTight},
                 {"kv_bytes", 100}};
  if (!per_generation.is_null()) record["samples_per_generation"] = per_generation;
  return {{"id", "t.a"},
          {"suite", "throughput"},
          {"method", {{"name", "full"}}},
          {"params", json::object()},
          {"status", "ok"},
          {"summary", json::object()},
          {"records", {record}}};
}

// Decode steps are resampled by generation (samples_per_generation): steps at two levels, one
// generation slow throughout, give a much wider interval than single steps do.
// Ten generations of ten steps, x `factor`: levels that differ between generations, steps
// within one that barely do (one batch, one context).
std::vector<double> generation_steps(double factor) {
  std::vector<double> out;
  for (int generation = 0; generation < 10; ++generation)
    for (int step = 0; step < 10; ++step)
      out.push_back(0.010 * (1 + 0.08 * (generation % 4)) * factor * (1 + 0.001 * step));
  return out;
}

TEST(Compare, DecodeStepsAreResampledByGeneration) {
  const std::vector<double> base = generation_steps(1), cand = generation_steps(1.12);
  const MetricComparison by_generation =
      find(compare_reports(report({throughput_cell(base, 10)}), report({throughput_cell(cand, 10)}),
                           defaults()),
           "decode_tok_s");
  const MetricComparison by_step = find(
      compare_reports(report({throughput_cell(base)}), report({throughput_cell(cand)}), defaults()),
      "decode_tok_s");
  EXPECT_NEAR(by_generation.change, by_step.change, 1e-12);
  EXPECT_GT(by_generation.change_ci.high - by_generation.change_ci.low,
            2 * (by_step.change_ci.high - by_step.change_ci.low));
  // A count that does not divide the steps falls back to single steps.
  const MetricComparison odd = find(compare_reports(report({throughput_cell(base, 7)}),
                                                    report({throughput_cell(cand, 7)}), defaults()),
                                    "decode_tok_s");
  EXPECT_EQ(odd.change_ci.low, by_step.change_ci.low);
}

// Runs of one binary whose levels differ by a third (the CI machine's speed shifts between two
// levels over seconds: docs/report-and-compare.md): one fast baseline run against one slow new run
// is called a regression, though nothing changed; three runs a side, each mixing the levels, show
// the spread and pass; a real slow-down of every run still fails, and point values take the median
// over the runs.
TEST(Compare, RepeatedRunsCarryTheSpreadBetweenProcesses) {
  auto run = [](double level, int64_t kv_bytes = 1000) {
    return report({latency_cell("l.a", scaled(kTight, level), kv_bytes)});
  };
  const CompareResult one = compare_runs({run(1.0)}, {run(1.35)}, defaults());
  EXPECT_TRUE(find(one, "tpot").regressed);
  EXPECT_EQ(one.notes.back().rfind("one run on a side", 0), 0u) << one.notes.back();
  const std::vector<json> base = {run(1.0), run(1.35), run(1.0)},
                          same = {run(1.35), run(1.0), run(1.35)};
  const CompareResult spread = compare_runs(base, same, defaults());
  const MetricComparison& tpot = find(spread, "tpot");
  EXPECT_FALSE(tpot.regressed);
  EXPECT_LT(tpot.change_ci.low, 0.0);
  EXPECT_GT(tpot.change_ci.high, 0.3);
  EXPECT_EQ(spread.regressions(), 0u);
  for (const std::string& n : spread.notes)
    EXPECT_EQ(n.find("one run on a side"), std::string::npos);
  const CompareResult slower = compare_runs(base, {run(2.0), run(2.7), run(2.0)}, defaults());
  EXPECT_TRUE(find(slower, "tpot").regressed);
  EXPECT_GT(find(slower, "tpot").change_ci.low, 0.3);
  // kv_bytes 1000 in every baseline run; 1000, 1100, 1100 now: the median 1100 is +10%.
  const CompareResult bytes =
      compare_runs(base, {run(1.0, 1000), run(1.0, 1100), run(1.0, 1100)}, defaults());
  EXPECT_NEAR(find(bytes, "kv_bytes").candidate, 1100.0, 1e-9);
  EXPECT_TRUE(find(bytes, "kv_bytes").regressed);
}

// A baseline run without raw samples (a report from before they were written) leaves the
// timing to the runs that have them, as a run missing the point would.
TEST(Compare, ABaselineRunWithoutSamplesLeavesTheOthersToJudge) {
  json bare = latency_cell("l.a", kTight);
  for (json& r : bare["records"]) r["samples_s"] = json::array();
  const json a = report({latency_cell("l.a", kTight)});
  const json slow = report({latency_cell("l.a", scaled(kTight, 1.5))});
  const CompareResult r = compare_runs({report({bare}), a}, {slow}, defaults());
  EXPECT_TRUE(find(r, "tpot").regressed);
  bool noted = false;
  for (const std::string& n : r.notes)
    noted = noted ||
            n.find("raw samples in 1 of 2 baseline runs; compared over those") != std::string::npos;
  EXPECT_TRUE(noted);
  const CompareResult none = compare_runs({report({bare}), report({bare})}, {slow}, defaults());
  EXPECT_EQ(none.regressions(), 0u);
}

// Runs of a side must repeat one config; a cell failing in one run of either side is that
// side's failure, naming the run.
TEST(Compare, RepeatedRunsMustShareTheirCells) {
  const json a = report({latency_cell("l.a", kTight)});
  const json ab = report({latency_cell("l.a", kTight), latency_cell("l.b", kTight)});
  EXPECT_THROW(compare_runs({a, ab}, {a}, defaults()), Error);
  EXPECT_THROW(compare_runs({a}, {a, ab}, defaults()), Error);
  EXPECT_THROW(compare_runs({}, {a}, defaults()), Error);
  json failed = latency_cell("l.a", kTight);
  failed["status"] = "failed";
  failed["error"] = "out of memory";
  const CompareResult now = compare_runs({a, a}, {a, report({failed})}, defaults());
  ASSERT_EQ(now.newly_failed.size(), 1u);
  EXPECT_EQ(now.newly_failed[0], "l.a: out of memory (run 2 of 2)");
  // A baseline run that failed leaves the others to judge by; every one failed, none.
  const CompareResult before = compare_runs({report({failed}), a}, {a}, defaults());
  EXPECT_FALSE(before.comparisons.empty());
  EXPECT_EQ(before.regressions(), 0u);
  EXPECT_EQ(
      before.notes.front(),
      "l.a: failed in baseline (run 1 of 2); compared over the 1 baseline runs where it is ok");
  const json slow = report({latency_cell("l.a", scaled(kTight, 1.5))});
  EXPECT_TRUE(find(compare_runs({report({failed}), a}, {slow}, defaults()), "tpot").regressed);
  const CompareResult never = compare_runs({report({failed}), report({failed})}, {a}, defaults());
  EXPECT_TRUE(never.comparisons.empty());
  EXPECT_EQ(never.notes.front(), "l.a: failed in every baseline run; not compared");
  // Runs of one side from different builds are noted.
  json other_build = a;
  other_build["kvbench"] = {{"git_revision", "abc1234"}};
  const CompareResult mixed = compare_runs({a, other_build}, {a}, defaults());
  EXPECT_EQ(mixed.notes.front(),
            "the baseline runs come from 2 builds (git revisions abc1234, "
            "unknown): a side's runs should repeat one build");
  // ... as are cells a run reused from another build (run --resume: measured_by).
  json resumed = a;
  resumed["cells"][0]["measured_by"] = "def5678";
  EXPECT_EQ(compare_runs({a, resumed}, {a}, defaults()).notes.front(),
            "the baseline runs come from 2 builds (git revisions def5678, "
            "unknown): a side's runs should repeat one build");
  // A failure now against a baseline ok in only some runs says so.
  const CompareResult partly = compare_runs({report({failed}), a}, {report({failed})}, defaults());
  ASSERT_EQ(partly.newly_failed.size(), 1u);
  EXPECT_EQ(partly.newly_failed[0], "l.a: out of memory; ok in 1 of 2 baseline runs");
  // Timings from one ok run of a side (two runs, one failed) carry the one-run note.
  const CompareResult one_ok = compare_runs({report({failed}), a}, {a, a}, defaults());
  EXPECT_TRUE(std::any_of(one_ok.notes.begin(), one_ok.notes.end(), [](const std::string& n) {
    return n.rfind("one run on a side", 0) == 0;
  }));
  for (const std::string& n : compare_runs({a, a}, {a, a}, defaults()).notes)
    EXPECT_EQ(n.find("one run on a side"), std::string::npos);
}

json serving_record(double rate, const std::vector<double>& ttft, double goodput) {
  return {{"kind", "serving"},
          {"rate", rate},
          {"arrivals", "poisson"},
          {"samples_s", kTight},
          {"ttft_samples_s", ttft},
          {"token_throughput", 50.0 * rate},
          {"goodput", {{"fraction", goodput}}}};
}

json serving_cell(const std::vector<double>& slow_ttft, double goodput) {
  return {{"id", "s.a"},
          {"suite", "serving"},
          {"method", {{"name", "int4"}}},
          {"params", json::object()},
          {"status", "ok"},
          {"summary", {{"bytes_per_block", 4096}}},
          {"records", {serving_record(1, kTight, 1.0), serving_record(4, slow_ttft, goodput)}}};
}

// A serving timing's interval is the moving-block one (requests in arrival order are coupled by
// their queue), block round(n^(1/3)): 3 for kTight's 20 requests.
TEST(Compare, ServingRequestsAreResampledInMovingBlocks) {
  const std::vector<double> slow = scaled(kTight, 1.02);
  const CompareOptions o = defaults();
  const CompareResult r =
      compare_reports(report({serving_cell(kTight, 1.0)}), report({serving_cell(slow, 1.0)}), o);
  const Interval want = bootstrap_median_change_ci_runs({{kTight, 3, true}}, {{slow, 3, true}},
                                                        o.confidence, o.resamples, o.seed);
  const Interval iid =
      bootstrap_median_change_ci_runs({{kTight}}, {{slow}}, o.confidence, o.resamples, o.seed);
  ASSERT_NE(want.low, iid.low);
  bool seen = false;
  for (const MetricComparison& c : r.comparisons) {
    if (c.metric != "serving_ttft" || c.point != "rate=4.0 arrivals=\"poisson\"") continue;
    seen = true;
    EXPECT_DOUBLE_EQ(c.change_ci.low, want.low);
    EXPECT_DOUBLE_EQ(c.change_ci.high, want.high);
  }
  EXPECT_TRUE(seen);
}

// `chat_format: auto` resolves by the checkpoint's template: matched accuracy cells scored under
// two formats were given different prompts, so their scores are noted, not compared.
TEST(Compare, AccuracyUnderAnotherChatFormatIsNotCompared) {
  auto cell = [](const char* format, double score) {
    return json{{"id", "a.full"},
                {"suite", "accuracy"},
                {"method", {{"name", "full"}}},
                {"params", {{"chat_format", "auto"}}},
                {"status", "ok"},
                {"records", json::array()},
                {"summary", {{"mean_score", score}, {"chat_format", format}}}};
  };
  const CompareResult same =
      compare_reports(report({cell("llama3", 0.8)}), report({cell("llama3", 0.5)}), defaults());
  EXPECT_TRUE(find(same, "mean_score").regressed);
  const CompareResult other =
      compare_reports(report({cell("llama3", 0.8)}), report({cell("llama3.1", 0.5)}), defaults());
  EXPECT_TRUE(other.comparisons.empty());
  EXPECT_EQ(other.regressions(), 0u);
  EXPECT_TRUE(std::any_of(other.notes.begin(), other.notes.end(), [](const std::string& n) {
    return n ==
           "a.full: scored with chat format llama3 in the baseline and llama3.1 in the new "
           "report; not compared";
  })) << json(other.notes).dump();  // The same format but other prompt ids (another tokenizer, or a
                                    // prompt cut to another
  // length): the records' prompt_hash says so.
  auto hashed = [&](const char* second) {
    json c = cell("llama3", 0.8);
    c["records"] = {{{"kind", "scored_sample"}, {"id", "s0"}, {"prompt_hash", "00aa"}},
                    {{"kind", "scored_sample"}, {"id", "s1"}, {"prompt_hash", second}}};
    return c;
  };
  json lower = hashed("00bb");
  lower["summary"]["mean_score"] = 0.5;
  EXPECT_TRUE(
      find(compare_reports(report({hashed("00bb")}), report({lower}), defaults()), "mean_score")
          .regressed);
  lower["records"][1]["prompt_hash"] = "00cc";
  const CompareResult cut = compare_reports(report({hashed("00bb")}), report({lower}), defaults());
  EXPECT_TRUE(cut.comparisons.empty());
  EXPECT_TRUE(std::any_of(cut.notes.begin(), cut.notes.end(), [](const std::string& n) {
    return n.find("a.full: the prompts of 1 of 2 samples differ (prompt_hash") == 0;
  })) << json(cut.notes).dump();
}

// With max_concurrency a request may wait for a slot before it is sent, outside serving_ttft:
// serving_client_ttft judges what its client sees, wait plus TTFT, and only for such records.
TEST(Compare, AClientsWaitForASlotIsCompared) {
  auto limited = [](double wait) {
    json cell = serving_cell(kTight, 1.0);
    json& r = cell["records"][1];
    r["max_concurrency"] = 2;
    r["requests_detail"] = json::array();
    for (size_t i = 0; i < kTight.size(); ++i)
      r["requests_detail"].push_back(
          {{"client_wait_s", wait * (1 + 0.01 * i)}, {"ttft_s", kTight[i]}});
    return cell;
  };
  const CompareResult r =
      compare_reports(report({limited(0.2)}), report({limited(0.6)}), defaults());
  const MetricComparison& c = find(r, "serving_client_ttft");
  EXPECT_EQ(c.point, "rate=4.0 arrivals=\"poisson\"");  // the record without a limit: none
  EXPECT_TRUE(c.regressed);
  EXPECT_FALSE(find(r, "serving_ttft").regressed);
  EXPECT_EQ(
      std::count_if(r.comparisons.begin(), r.comparisons.end(),
                    [](const MetricComparison& m) { return m.metric == "serving_client_ttft"; }),
      1);
  EXPECT_FALSE(find(compare_reports(report({limited(0.2)}), report({limited(0.2)}), defaults()),
                    "serving_client_ttft")
                   .regressed);
}

// Serving cells compare per rate: a TTFT slow-down and a goodput drop at one rate regress only
// there; throughput and the format's bytes per block are unchanged.
TEST(Compare, ServingMetricsPerRate) {
  const CompareResult r =
      compare_reports(report({serving_cell(kTight, 0.9)}),
                      report({serving_cell(scaled(kTight, 1.3), 0.7)}), defaults());
  std::map<std::string, size_t> count;
  for (const MetricComparison& c : r.comparisons) {
    ++count[c.metric];
    if (c.metric == "serving_ttft" || c.metric == "goodput")
      EXPECT_EQ(c.regressed, c.point == "rate=4.0 arrivals=\"poisson\"") << c.point;
    if (c.metric == "serving_e2e") EXPECT_FALSE(c.regressed);
  }
  EXPECT_EQ(count, (std::map<std::string, size_t>{
                       {"goodput", 2}, {"kv_bytes", 1}, {"serving_e2e", 2}, {"serving_ttft", 2}}));
  EXPECT_FALSE(find(r, "kv_bytes").regressed);
  EXPECT_EQ(r.regressions(), 2u);
  // A goodput change within its absolute floor (without a request count: 0.1) is not a
  // regression.
  const CompareResult small = compare_reports(report({serving_cell(kTight, 0.9)}),
                                              report({serving_cell(kTight, 0.81)}), defaults());
  EXPECT_EQ(small.regressions(), 0u);
  // With the record's requests, the floor is two of them: of 32, 0.0625. Three requests lost
  // (0.094, past 10% of 0.9) regress; two (0.0625) do not; and a 5% threshold now acts.
  auto counted = [](double goodput) {
    json c = serving_cell(kTight, goodput);
    for (json& r : c["records"]) r["requests"] = 32;
    return c;
  };
  EXPECT_EQ(compare_reports(report({counted(0.9)}), report({counted(0.9 - 3.0 / 32)}), defaults())
                .regressions(),
            1u);
  EXPECT_EQ(compare_reports(report({counted(0.9)}), report({counted(0.9 - 2.0 / 32)}), defaults())
                .regressions(),
            0u);
  // Fractions as records write them (good / n): 9 of 10 then 7 of 10 differ by a hair more
  // than 2 / 10 in doubles, and are still two requests.
  auto of_ten = [](double goodput) {
    json c = serving_cell(kTight, goodput);
    for (json& r : c["records"]) r["requests"] = 10;
    return c;
  };
  ASSERT_GT(9.0 / 10 - 7.0 / 10, 2.0 / 10);
  EXPECT_EQ(compare_reports(report({of_ten(9.0 / 10)}), report({of_ten(7.0 / 10)}), defaults())
                .regressions(),
            0u);
  EXPECT_EQ(compare_reports(report({of_ten(9.0 / 10)}), report({of_ten(6.0 / 10)}), defaults())
                .regressions(),
            1u);
  CompareOptions tight = defaults();
  tight.thresholds["goodput"] = 5;
  EXPECT_EQ(compare_reports(report({counted(1.0)}), report({counted(1.0 - 3.0 / 32)}), tight)
                .regressions(),
            1u);
  // A baseline from before records said "arrivals" (all Poisson then) matches today's points.
  json old = serving_cell(kTight, 0.9);
  for (json& r : old["records"]) r.erase("arrivals");
  const CompareResult across =
      compare_reports(report({old}), report({serving_cell(kTight, 0.9)}), defaults());
  EXPECT_EQ(across.regressions(), 0u);
  EXPECT_EQ(find(across, "serving_ttft").point, "rate=1.0 arrivals=\"poisson\"");
  // A trace's one record is matched by its arrivals alone: the rate is measured from the trace.
  json base = serving_cell(kTight, 1.0), cand = serving_cell(scaled(kTight, 1.3), 1.0);
  base["records"] = {serving_record(2.5, kTight, 1.0)};
  cand["records"] = {serving_record(2.6, scaled(kTight, 1.3), 1.0)};
  base["records"][0]["arrivals"] = cand["records"][0]["arrivals"] = "trace";
  const CompareResult trace = compare_reports(report({base}), report({cand}), defaults());
  EXPECT_EQ(find(trace, "serving_ttft").point, "arrivals=\"trace\"");
  EXPECT_TRUE(find(trace, "serving_ttft").regressed);
}

// Serving's kv_bytes also compares the budget's charge per block, retention bookkeeping
// included: a policy whose bookkeeping grows regresses there though its format is unchanged. A
// baseline (or a new report) written before retention_bytes_per_block compares the format's
// bytes only, and says the charge was not compared.
TEST(Compare, ServingChargePerBlockCountsRetention) {
  auto with_retention = [](double retention) {
    json c = serving_cell(kTight, 1.0);
    c["summary"]["retention_bytes_per_block"] = retention;
    return c;
  };
  const CompareResult grown =
      compare_reports(report({with_retention(256)}), report({with_retention(1024)}), defaults());
  std::map<std::string, bool> regressed;
  for (const MetricComparison& c : grown.comparisons)
    if (c.metric == "kv_bytes") regressed[c.point] = c.regressed;
  EXPECT_EQ(regressed, (std::map<std::string, bool>{{"", false}, {"charged_per_block", true}}));
  const CompareResult same =
      compare_reports(report({with_retention(256)}), report({with_retention(256)}), defaults());
  for (const MetricComparison& c : same.comparisons)
    if (c.metric == "kv_bytes" && c.point == "charged_per_block")
      EXPECT_DOUBLE_EQ(c.candidate, 4096 + 256);
  EXPECT_EQ(same.regressions(), 0u);

  const CompareResult old = compare_reports(report({serving_cell(kTight, 1.0)}),
                                            report({with_retention(1024)}), defaults());
  EXPECT_EQ(old.regressions(), 0u);
  EXPECT_EQ(find(old, "kv_bytes").point, "");
  EXPECT_TRUE(std::any_of(old.notes.begin(), old.notes.end(), [](const std::string& n) {
    return n == "s.a kv_bytes charged_per_block: only in the new report; not compared";
  }));
  // And the other way round (a new side from before the field): noted, not missing.
  const CompareResult older = compare_reports(report({with_retention(1024)}),
                                              report({serving_cell(kTight, 1.0)}), defaults());
  EXPECT_EQ(older.regressions(), 0u);
  EXPECT_TRUE(std::any_of(older.notes.begin(), older.notes.end(), [](const std::string& n) {
    return n.rfind("s.a kv_bytes charged_per_block: no retention_bytes_per_block", 0) == 0;
  }));
}

TEST(Compare, PredictorStepTimesAndAccuracy) {
  auto cell = [](const std::vector<double>& steps, double accuracy) {
    return json{{"id", "p.a"},
                {"suite", "predictor"},
                {"method", {{"name", "full"}}},
                {"params", json::object()},
                {"status", "ok"},
                {"summary", {{"accuracy_mean", accuracy}}},
                {"records",
                 {{{"kind", "step_profile"},
                   {"role", "grid"},
                   {"batch", 2},
                   {"context", 64},
                   {"samples_s", steps}}}}};
  };
  const CompareResult r = compare_reports(report({cell(kTight, 0.95)}),
                                          report({cell(scaled(kTight, 1.2), 0.80)}), defaults());
  EXPECT_TRUE(find(r, "predictor_step").regressed);
  EXPECT_EQ(find(r, "predictor_step").point, "role=\"grid\" batch=2 context=64");
  EXPECT_TRUE(find(r, "predictor_accuracy").regressed);
  EXPECT_EQ(r.regressions(), 2u);
  // Within the accuracy floor (0.05): not a regression.
  EXPECT_FALSE(
      find(compare_reports(report({cell(kTight, 0.95)}), report({cell(kTight, 0.91)}), defaults()),
           "predictor_accuracy")
          .regressed);
}

// The predictor's steps of one generation share its batch and context: with the record's
// samples_per_generation they are drawn as one unit, a wider interval than single steps give.
TEST(Compare, PredictorStepsAreResampledByGeneration) {
  auto cell = [](const std::vector<double>& steps, int64_t per_generation) {
    json record = {{"kind", "step_profile"},
                   {"role", "grid"},
                   {"batch", 2},
                   {"context", 64},
                   {"samples_s", steps}};
    if (per_generation > 0) record["samples_per_generation"] = per_generation;
    return json{{"id", "p.a"},
                {"suite", "predictor"},
                {"method", {{"name", "full"}}},
                {"params", json::object()},
                {"status", "ok"},
                {"summary", {{"accuracy_mean", 0.9}}},
                {"records", {record}}};
  };
  const std::vector<double> base = generation_steps(1), cand = generation_steps(1.12);
  auto step_ci = [&](int64_t per_generation) {
    const MetricComparison c =
        find(compare_reports(report({cell(base, per_generation)}),
                             report({cell(cand, per_generation)}), defaults()),
             "predictor_step");
    return c.change_ci.high - c.change_ci.low;
  };
  EXPECT_GT(step_ci(10), 2 * step_ci(0));
}

// A latency record with no samples, in a report whose summary would give a block from its
// requests and batch (an older or hand-edited report): a missing timing, not a crash.
TEST(Compare, EmptyLatencySamplesAreMissingNotACrash) {
  json base = latency_cell("lat.a", kTight), cand = latency_cell("lat.a", kTight);
  base["summary"]["requests"] = 20;
  base["summary"]["batch"] = 1;
  cand["summary"] = base["summary"];
  for (json& r : cand["records"])
    if (r["kind"] == "tpot") r["samples_s"] = json::array();
  const CompareResult r = compare_reports(report({base}), report({cand}), defaults());
  EXPECT_GE(r.regressions(), 1u);
  const CompareResult same = compare_reports(report({cand}), report({cand}), defaults());
  EXPECT_NO_THROW(same.regressions());
}

// Cells from a version without a parameter added since match today's when `canonical` fills
// in defaults (a kernels cell from before `llc_bytes`); without it they are missing.
TEST(Compare, CellsFromBeforeANewParameterMatchUnderTodaysDefaults) {
  json old_cell = latency_cell("k.old", kTight), new_cell = latency_cell("k.new", kTight);
  old_cell["suite"] = new_cell["suite"] = "kernels";
  old_cell["method"] = new_cell["method"] = {{"name", "full"}};
  new_cell["params"] = resolve_suite({{"name", "kernels"}}, "suites[0]");
  new_cell["params"].erase("name");
  old_cell["params"] = new_cell["params"];
  old_cell["params"].erase("llc_bytes");
  EXPECT_EQ(compare_reports(report({old_cell}), report({new_cell}), defaults()).missing,
            std::vector<std::string>{"k.old"});
  CompareOptions o = defaults();
  o.canonical = resolve_cell_parts;
  const CompareResult r = compare_reports(report({old_cell}), report({new_cell}), o);
  EXPECT_TRUE(r.missing.empty());
  EXPECT_EQ(r.regressions(), 0u);
  // A parameter this version does not know: no match, and no exception.
  old_cell["params"]["retired_knob"] = 1;
  EXPECT_EQ(compare_reports(report({old_cell}), report({new_cell}), o).missing.size(), 1u);
}

// The metrics read what the suites really write: a real serving cell compared with itself has
// every per-rate metric and no regression.
TEST(Compare, ARealServingCellComparesWithItself) {
  testing_support::Harness h(json::parse(R"({"name": "serving", "rates": [4, 1000], "requests": 3,
                      "prompt_tokens_min": 8, "prompt_tokens_max": 16,
                      "output_tokens_min": 2, "output_tokens_max": 4})"),
                             "tiny-llama");
  ServingSuite s;
  const CellOutput out = h.run(s);
  const json cell = {{"id", "s.real"},        {"suite", "serving"},
                     {"method", h.method},    {"params", h.spec.suites[0].params},
                     {"status", "ok"},        {"records", out.records},
                     {"summary", out.summary}};
  const CompareResult r = compare_reports(report({cell}), report({cell}), defaults());
  std::map<std::string, size_t> count;
  for (const MetricComparison& c : r.comparisons) ++count[c.metric];
  // kv_bytes: the format's bytes per block and the budget's charge per block.
  EXPECT_EQ(count, (std::map<std::string, size_t>{
                       {"goodput", 2}, {"kv_bytes", 2}, {"serving_e2e", 2}, {"serving_ttft", 2}}));
  EXPECT_EQ(r.regressions(), 0u);
  // Every point was compared; with 3 requests a rate, each timing says its samples are few,
  // and the last note that one run a side shows no spread between runs.
  ASSERT_EQ(r.notes.size(), 5u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NE(r.notes[i].find(": 3 baseline samples and 3 new samples; an interval from fewer "
                              "than 10 understates the noise"),
              std::string::npos)
        << r.notes[i];
  EXPECT_EQ(r.notes[4].rfind("one run on a side: timing intervals hold the noise within a run", 0),
            0u)
      << r.notes[4];
}

TEST(Compare, FailedCellsAndMatchingByParameters) {
  json failed = latency_cell("l.a", kTight);
  failed["status"] = "failed";
  failed["error"] = "out of memory";
  const CompareResult r =
      compare_reports(report({latency_cell("l.a", kTight)}), report({failed}), defaults());
  ASSERT_EQ(r.newly_failed.size(), 1u);
  EXPECT_NE(r.newly_failed[0].find("out of memory"), std::string::npos);
  EXPECT_EQ(r.regressions(), 1u);
  // Another id (e.g. another thread count) but the same suite, method and parameters.
  const CompareResult byparams =
      compare_reports(report({latency_cell("l.a", kTight)}),
                      report({latency_cell("l.b", scaled(kTight, 1.2))}), defaults());
  EXPECT_TRUE(find(byparams, "tpot").regressed);
  EXPECT_EQ(find(byparams, "tpot").cell, "l.a");
  // The note names what the reports' configs differ in, or that they do not.
  auto match_note = [](const CompareResult& r) {
    for (const std::string& n : r.notes)
      if (n.rfind("l.a: matched to l.b", 0) == 0) return n;
    return std::string();
  };
  EXPECT_NE(match_note(byparams).find("(the ids differ: the configs and code paths are alike"),
            std::string::npos)
      << match_note(byparams);
  json base = report({latency_cell("l.a", kTight)}), other = report({latency_cell("l.b", kTight)});
  base["config"]["threads"] = 2, other["config"]["threads"] = 4;
  base["config"]["suites"] = json::array({{{"name", "latency"}}});
  EXPECT_NE(
      match_note(compare_reports(base, other, defaults())).find("(the ids differ: threads 2 vs 4)"),
      std::string::npos)
      << match_note(compare_reports(base, other, defaults()));
  // A long model entry differing only in its path names the path, whole; the seed, not in
  // the ids, is not named.
  base["config"]["threads"] = other["config"]["threads"] = 2;
  base["config"]["seed"] = 1, other["config"]["seed"] = 2;
  base["config"]["model"] = {{"compute_dtype", "float32"},
                             {"dtype", "float32"},
                             {"kv_dtype", "float16"},
                             {"path", "/data/models/llama-a"}};
  other["config"]["model"] = base["config"]["model"];
  other["config"]["model"]["path"] = "/data/models/llama-b";
  EXPECT_NE(match_note(compare_reports(base, other, defaults()))
                .find("(the ids differ: model.path \"/data/models/llama-a\" vs "
                      "\"/data/models/llama-b\")"),
            std::string::npos)
      << match_note(compare_reports(base, other, defaults()));
  // The code path's variables are named too (they enter the ids).
  other["config"]["model"] = base["config"]["model"];
  base["environment"]["overrides"] = json::object();
  other["environment"]["overrides"] = {{"KVBENCH_SIMD", "avx2"}};
  EXPECT_NE(match_note(compare_reports(base, other, defaults()))
                .find("(the ids differ: environment.overrides.KVBENCH_SIMD (none) vs \"avx2\")"),
            std::string::npos)
      << match_note(compare_reports(base, other, defaults()));
}

// A point one baseline run lacks is compared over the runs that have it (with a note), not
// dropped for every run; one a new run lacks is missing.
TEST(Compare, APointSomeBaselineRunLacksIsComparedOverTheOthers) {
  const json whole = report({throughput_cell(kTight)});
  json partial = whole;
  partial["cells"][0]["records"] = json::array();  // run 2 lost the point (an older report)
  const CompareResult r = compare_runs({whole, partial, whole}, {whole}, defaults());
  bool compared = false;
  for (const MetricComparison& c : r.comparisons)
    compared = compared || (c.metric == "decode_tok_s" && c.point.find("batch=4") == 0);
  EXPECT_TRUE(compared);
  EXPECT_TRUE(r.missing.empty());
  bool noted = false;
  for (const std::string& n : r.notes)
    noted = noted || n.find(
                         "decode_tok_s batch=4 prompt_tokens=16 new_tokens=4: in 2 of 3 "
                         "baseline runs; compared over those") != std::string::npos;
  EXPECT_TRUE(noted) << json(r.notes).dump();
  const CompareResult lacking = compare_runs({whole}, {whole, partial}, defaults());
  EXPECT_FALSE(lacking.missing.empty());
}

TEST(Compare, MissingCellsRegressAndOtherSetupsDoNotMatchByParameters) {
  // An ok baseline cell the new report lacks fails the gate (a run that dropped cells).
  const CompareResult dropped =
      compare_reports(report({latency_cell("l.a", kTight), fidelity_cell("f.a", 0.1)}),
                      report({latency_cell("l.a", kTight)}), defaults());
  EXPECT_EQ(dropped.missing, std::vector<std::string>{"f.a"});
  EXPECT_EQ(dropped.regressions(), 1u);
  // Another attention backend (or device, or model): cells with other ids are not the same
  // measurement, so the parameter match is off and the baseline cell counts as missing.
  json base = report({latency_cell("l.a", kTight)}), other = report({latency_cell("l.b", kTight)});
  base["config"]["attention"] = "cpu";
  other["config"]["attention"] = "reference";
  const CompareResult r = compare_reports(base, other, defaults());
  EXPECT_TRUE(r.comparisons.empty());
  EXPECT_EQ(r.missing, std::vector<std::string>{"l.a"});
  other["config"]["attention"] = "cpu";
  EXPECT_EQ(compare_reports(base, other, defaults()).missing.size(), 0u);
  // A new cell with another id that failed is noted with its error beside the missing one.
  json failed = latency_cell("l.c", kTight);
  failed["status"] = "failed", failed["error"] = "out of memory";
  other["config"]["attention"] = "reference";
  other["cells"].push_back(failed);
  const CompareResult f = compare_reports(base, other, defaults());
  EXPECT_EQ(f.missing, std::vector<std::string>{"l.a"});
  EXPECT_NE(std::find(f.notes.begin(), f.notes.end(),
                      "l.c: only in the new report, where it failed (out of memory); not compared"),
            f.notes.end());
}

// A metric or point of a matched cell that the new run no longer measures fails the gate as a
// missing cell does; one the baseline lacks is only noted.
TEST(Compare, MissingPointsAndMetricsRegress) {
  json lost = latency_cell("l.a", kTight);
  lost["records"].erase(1);  // the tpot record
  json empty_kl = fidelity_cell("f.a", 0.1);
  empty_kl["summary"].erase("kl_mean");
  const CompareResult r =
      compare_reports(report({latency_cell("l.a", kTight), fidelity_cell("f.a", 0.1)}),
                      report({lost, empty_kl}), defaults());
  EXPECT_EQ(r.missing, (std::vector<std::string>{"l.a tpot", "f.a kl_mean"}));
  EXPECT_EQ(r.regressions(), 2u);
  // Samples gone from a record still there count as missing too.
  json no_samples = latency_cell("l.a", kTight);
  no_samples["records"][1]["samples_s"] = json::array();
  EXPECT_EQ(compare_reports(report({latency_cell("l.a", kTight)}), report({no_samples}), defaults())
                .missing,
            std::vector<std::string>{"l.a tpot (no raw samples now)"});
  // The other way round (the new run measures more) passes, with a note.
  const CompareResult more =
      compare_reports(report({no_samples}), report({latency_cell("l.a", kTight)}), defaults());
  EXPECT_TRUE(more.missing.empty());
  EXPECT_EQ(more.regressions(), 0u);
}

// ITL samples are each request's gaps in turn. Requests whose gaps sit at different levels
// (one request slow throughout) make single gaps a poor unit: the interval resampled by request
// is much wider than the one over single gaps, and a shift inside it passes.
TEST(Compare, InterTokenLatencyIsResampledByRequest) {
  std::vector<double> base, cand;
  for (int request = 0; request < 8; ++request)
    for (int gap = 0; gap < 15; ++gap) {
      const double level = 0.010 * (1 + 0.1 * request);  // 10 .. 17 ms per request
      base.push_back(level * (1 + 0.001 * gap));
      cand.push_back(level * 1.12 * (1 + 0.001 * gap));
    }
  // (A report from before samples_per_generation: the unit comes from the summary's request
  // count and batch, 1 when absent.)
  auto cell = [](const std::vector<double>& itl, json requests) {
    json c = latency_cell("l.a", kTight);
    c["records"][2]["samples_s"] = itl;
    c["summary"]["requests"] = requests;
    return c;
  };
  const CompareResult by_request =
      compare_reports(report({cell(base, 8)}), report({cell(cand, 8)}), defaults());
  const CompareResult by_gap =
      compare_reports(report({cell(base, json())}), report({cell(cand, json())}), defaults());
  const MetricComparison &r = find(by_request, "itl"), &g = find(by_gap, "itl");
  EXPECT_NEAR(r.change, g.change, 1e-12);
  EXPECT_GT(r.change_ci.high - r.change_ci.low, 2 * (g.change_ci.high - g.change_ci.low));
  EXPECT_FALSE(r.regressed);
  // A request count that does not divide the samples falls back to single gaps.
  const CompareResult odd_result =
      compare_reports(report({cell(base, 7)}), report({cell(cand, 7)}), defaults());
  const MetricComparison& odd = find(odd_result, "itl");
  EXPECT_EQ(odd.change_ci.low, g.change_ci.low);
  // The record's own samples_per_generation wins: 2 requests of a batch share their steps, so
  // 8 requests in batches of 2 are 4 units of 30 gaps.
  json batched = cell(cand, 8);
  batched["records"][2]["samples_per_generation"] = 30;
  const CompareResult four =
      compare_reports(report({cell(base, 8)}), report({batched}), defaults());
  bool noted = false;
  for (const std::string& n : four.notes)
    noted =
        noted || n.find("itl: 8 baseline generations and 4 new generations") != std::string::npos;
  EXPECT_TRUE(noted);
  // And the bootstrap itself: one run of all six samples resamples to itself every time (its
  // median, 3), where single samples would spread from 1 to 5.
  const Interval whole = bootstrap_median_ci({1, 1, 1, 5, 5, 5}, 0.95, 2000, 0, 6);
  EXPECT_DOUBLE_EQ(whole.low, 3.0);
  EXPECT_DOUBLE_EQ(whole.high, 3.0);
  const Interval single = bootstrap_median_ci({1, 1, 1, 5, 5, 5}, 0.95, 2000, 0, 1);
  EXPECT_DOUBLE_EQ(single.low, 1.0);
  EXPECT_DOUBLE_EQ(single.high, 5.0);
  EXPECT_THROW(bootstrap_median_ci({1, 2, 3, 4}, 0.95, 10, 0, 3), Error);
}

// A kernels cell with contexts "auto" plans its contexts from the machine's cache: a context
// the new machine did not plan is noted; one it planned and did not measure is missing.
TEST(Compare, AutoKernelContextsFollowTheMachine) {
  auto kernels = [](const std::vector<int64_t>& planned, const std::vector<int64_t>& measured) {
    json records = json::array();
    for (int64_t c : measured)
      records.push_back({{"kind", "decode_attention"},
                         {"context", c},
                         {"kv_heads", 2},
                         {"samples_s", kTight},
                         {"working_set_bytes", c * 100}});
    return json{{"id", "k.a"},
                {"suite", "kernels"},
                {"method", {{"name", "full"}}},
                {"params", {{"contexts", "auto"}}},
                {"status", "ok"},
                {"records", records},
                {"summary", {{"contexts", planned}}}};
  };
  const json base = report({kernels({1024, 4096}, {1024, 4096})});
  const CompareResult smaller =
      compare_reports(base, report({kernels({1024}, {1024})}), defaults());
  EXPECT_TRUE(smaller.missing.empty());
  EXPECT_EQ(smaller.regressions(), 0u);
  const CompareResult dropped =
      compare_reports(base, report({kernels({1024, 4096}, {1024})}), defaults());
  EXPECT_EQ(dropped.missing, (std::vector<std::string>{"k.a attention_step context=4096 kv_heads=2",
                                                       "k.a kv_bytes context=4096 kv_heads=2"}));
}

TEST(Compare, BusyMachinesAreNoted) {
  json quiet = report({latency_cell("l.a", kTight)}), busy = quiet;
  quiet["environment"]["competing_threads"] = 0.0;
  busy["environment"]["competing_threads"] = 2.0;
  EXPECT_EQ(busy_machine_note(quiet, quiet), "");
  const std::string note = busy_machine_note(quiet, busy);
  EXPECT_NE(note.find("baseline 0.0, new 2.0"), std::string::npos) << note;
  EXPECT_NE(busy_machine_note(report({}), busy).find("baseline unknown"), std::string::npos);
  const CompareResult r = compare_reports(quiet, busy, defaults());
  EXPECT_NE(std::find(r.notes.begin(), r.notes.end(), note), r.notes.end());
}

TEST(Compare, ThresholdArguments) {
  const auto t = parse_thresholds({"tpot=10", "kv_bytes=0.5", "itl=off"});
  EXPECT_DOUBLE_EQ(t.at("tpot"), 10);
  EXPECT_DOUBLE_EQ(t.at("kv_bytes"), 0.5);
  EXPECT_EQ(t.count("itl"), 0u);
  EXPECT_DOUBLE_EQ(t.at("ttft"), 10);  // defaults stay
  EXPECT_DOUBLE_EQ(t.at("decode_tok_s"), 5);
  EXPECT_DOUBLE_EQ(t.at("kl_mean"), 20);
  EXPECT_THROW(parse_thresholds({"tpot"}), Error);
  EXPECT_THROW(parse_thresholds({"tpot=fast"}), Error);
  EXPECT_THROW(parse_thresholds({"tpot=-1"}), Error);
  for (const char* odd : {"tpot=0x10", "tpot= 5", "tpot=1e3", "tpot=.", "tpot=1.2.3", "tpot=inf"})
    EXPECT_THROW(parse_thresholds({odd}), Error) << odd;
  EXPECT_DOUBLE_EQ(parse_thresholds({"tpot=.5"}).at("tpot"), 0.5);
  try {
    parse_thresholds({"latency=5"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown metric 'latency'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("tpot"), std::string::npos);
  }
}

}  // namespace
}  // namespace kvbench
