// The seed paper's serving tools, done on measured data: the step-time interpolators of the
// throughput predictor (exact on the cost model's family, within the interpolation error bound
// on smooth data, least squares against a float64 reference), the routing simulation
// (round-robin vs least predicted completion on hand-checkable workloads), the capacity view's
// byte accounting (against the caches' measured bytes) and the suites end to end on a tiny model.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <numeric>
#include <set>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/kv/paged_cache.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/report/compare.h"
#include "kvbench/serving/block_pool.h"
#include "kvbench/serving/request_source.h"
#include "kvbench/serving/router.h"
#include "kvbench/serving/serving_loop.h"
#include "kvbench/serving/step_time_predictor.h"
#include "kvbench/suites/capacity.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/output_length_suite.h"
#include "kvbench/suites/predictor_suite.h"
#include "kvbench/suites/run_spec.h"
#include "kvbench/suites/serving_suite.h"
#include "kvbench/suites/throughput_suite.h"
#include "kvbench/suites/workload.h"
#include "suite_harness.h"

namespace kvbench {
namespace {

using nlohmann::json;

const std::vector<double> kBatches = {1, 2, 4, 8};
const std::vector<double> kContexts = {64, 128, 256, 512};

template <class F>
std::vector<StepSample> grid_of(F f) {
  std::vector<StepSample> s;
  for (double b : kBatches)
    for (double c : kContexts) s.push_back({b, c, f(b, c)});
  return s;
}

// The decode cost model: weights once per step, per-sequence work, attention per held token.
double linear_cost(double b, double c) { return 2e-3 + 3e-4 * b + 1e-7 * c + 5e-8 * b * c; }

// --- interpolators ----------------------------------------------------------------------------

TEST(StepTimePredictor, BothModelsAreExactOnTheCostModelsFamily) {
  const auto grid = grid_of(linear_cost);
  const BilinearStepModel bilinear(grid);
  const LeastSquaresStepModel lsq(grid);
  for (double b : {1.0, 1.5, 3.0, 5.0, 7.9, 8.0, 12.0}) {        // 12: extrapolated
    for (double c : {64.0, 91.0, 181.0, 300.0, 512.0, 700.0}) {  // 700: extrapolated
      const double want = linear_cost(b, c);
      EXPECT_NEAR(bilinear.predict(b, c), want, 1e-12 * want) << b << " x " << c;
      EXPECT_NEAR(lsq.predict(b, c), want, 1e-9 * want) << b << " x " << c;
      EXPECT_NEAR(prediction_accuracy(bilinear.predict(b, c), want), 1.0, 1e-9);
    }
  }
  const auto& w = lsq.coefficients();
  EXPECT_NEAR(w[0], 2e-3, 1e-12);
  EXPECT_NEAR(w[1], 3e-4, 1e-12);
  EXPECT_NEAR(w[2], 1e-7, 1e-14);
  EXPECT_NEAR(w[3], 5e-8, 1e-15);
}

TEST(StepTimePredictor, BilinearPassesThroughTheGridAndFollowsAKink) {
  // A retention budget caps the held tokens at 256: the step time stops growing with context.
  auto capped = [](double b, double c) { return linear_cost(b, std::min(c, 256.0)); };
  const auto grid = grid_of(capped);
  const BilinearStepModel bilinear(grid);
  for (const StepSample& s : grid)
    EXPECT_DOUBLE_EQ(bilinear.predict(s.batch, s.context), s.seconds);
  // Piecewise, so exact on both sides of a kink at a grid node; one global formula is not.
  const LeastSquaresStepModel lsq(grid);
  double worst_lsq = 0;
  for (double b : {3.0, 6.0}) {
    for (double c : {91.0, 181.0, 362.0}) {
      EXPECT_NEAR(bilinear.predict(b, c), capped(b, c), 1e-12 * capped(b, c));
      worst_lsq = std::max(worst_lsq, 1 - prediction_accuracy(lsq.predict(b, c), capped(b, c)));
    }
  }
  EXPECT_GT(worst_lsq, 1e-3);
}

TEST(StepTimePredictor, BilinearErrorWithinTheInterpolationBoundOnSmoothData) {
  // f = a + b B^0.8 + c B C^1.5: |f - p| <= hB^2/8 max|f_BB| + hC^2/8 max|f_CC| on each cell.
  const double a = 1e-3, bb = 4e-4, cc = 2e-9;
  auto f = [&](double b, double c) {
    return a + bb * std::pow(b, 0.8) + cc * b * std::pow(c, 1.5);
  };
  const auto grid = grid_of(f);
  const BilinearStepModel model(grid);
  double worst_ratio = 0;
  for (size_t i = 0; i + 1 < kBatches.size(); ++i) {
    for (size_t j = 0; j + 1 < kContexts.size(); ++j) {
      const double b0 = kBatches[i], b1 = kBatches[i + 1], c0 = kContexts[j], c1 = kContexts[j + 1];
      const double fbb = bb * 0.8 * 0.2 * std::pow(b0, -1.2);       // |f_BB| largest at b0
      const double fcc = cc * b1 * 1.5 * 0.5 * std::pow(c0, -0.5);  // |f_CC| largest at b1, c0
      const double bound =
          (b1 - b0) * (b1 - b0) / 8 * fbb + (c1 - c0) * (c1 - c0) / 8 * fcc + 1e-15;
      for (int u = 0; u <= 10; ++u) {
        for (int v = 0; v <= 10; ++v) {
          const double b = b0 + (b1 - b0) * u / 10, c = c0 + (c1 - c0) * v / 10;
          const double err = std::abs(model.predict(b, c) - f(b, c));
          EXPECT_LE(err, bound) << "cell " << i << "," << j << " at " << b << " x " << c;
          worst_ratio = std::max(worst_ratio, err / bound);
        }
      }
    }
  }
  EXPECT_GT(worst_ratio, 0.05);  // the bound is not vacuous: some points come near it
}

TEST(StepTimePredictor, LeastSquaresMatchesAFloat64Reference) {
  Rng rng(3);
  std::vector<std::vector<double>> x;
  std::vector<double> y;
  for (int i = 0; i < 40; ++i) {
    const double b = 1 + rng.below(16), c = 32 + rng.below(2048);
    x.push_back({1.0, b, c, b * c});
    y.push_back(linear_cost(b, c) * (1 + 0.1 * (rng.uniform() - 0.5)));
  }
  const std::vector<double> w = least_squares(x, y);
  at::Tensor X = at::empty({40, 4}, at::kDouble), Y = at::empty({40, 1}, at::kDouble);
  for (int i = 0; i < 40; ++i) {
    for (int j = 0; j < 4; ++j) X[i][j] = x[i][j];
    Y[i][0] = y[i];
  }
  // Normal equations in float64 on well-scaled columns as the reference.
  at::Tensor scale = X.norm(2, {0});
  at::Tensor Xs = X / scale;
  at::Tensor ref = at::linalg_solve(Xs.t().mm(Xs), Xs.t().mm(Y)).squeeze(1) / scale;
  for (int j = 0; j < 4; ++j) {
    const double r = ref[j].item<double>();
    EXPECT_NEAR(w[j], r, 1e-7 * std::abs(r) + 1e-15) << "coefficient " << j;
  }
  // Rank deficiency (a repeated column) and too few rows are errors, not garbage.
  std::vector<std::vector<double>> dep;
  for (const auto& row : x) dep.push_back({row[0], row[1], 2 * row[1]});
  EXPECT_THROW(least_squares(dep, y), Error);
  EXPECT_THROW(least_squares({{1.0, 2.0}}, {1.0}), Error);
}

TEST(StepTimePredictor, GridProblemsAreNamed) {
  auto grid = grid_of(linear_cost);
  grid.pop_back();
  try {
    BilinearStepModel m(grid);
    FAIL() << "a missing grid point must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no sample at batch 8, context 512"), std::string::npos)
        << e.what();
  }
  grid = grid_of(linear_cost);
  grid.push_back(grid.front());
  EXPECT_THROW(BilinearStepModel{grid}, Error);
  EXPECT_THROW(
      LeastSquaresStepModel({{1, 64, 1e-3}, {1, 128, 2e-3}, {1, 256, 3e-3}, {1, 512, 4e-3}}),
      Error);  // one batch only
  EXPECT_THROW(prediction_accuracy(1.0, 0.0), Error);
  EXPECT_DOUBLE_EQ(prediction_accuracy(1.1, 1.0), 0.9);
  EXPECT_DOUBLE_EQ(prediction_accuracy(0.8, 1.0), 0.8);
}

TEST(StepTimePredictor, MidpointsLieStrictlyBetweenNeighbours) {
  EXPECT_EQ(midpoints_between({1, 2, 4, 8}), (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(midpoints_between({64, 128, 256, 512}), (std::vector<int64_t>{91, 181, 362}));
  EXPECT_EQ(midpoints_between({1, 3}), (std::vector<int64_t>{2}));
  EXPECT_TRUE(midpoints_between({1, 2}).empty());
}

// --- routing ----------------------------------------------------------------------------------

// Decode: 10 ms + 2 ms per sequence; prefill: 1 ms + 10 us per prompt token.
class LinearCost final : public StepCostModel {
 public:
  double step_s(const std::vector<int64_t>& decodes,
                const std::vector<int64_t>& prompts) const override {
    double t = 0;
    if (!decodes.empty()) t += 0.010 + 0.002 * static_cast<double>(decodes.size());
    if (!prompts.empty()) {
      t += 0.001 + 1e-5 * static_cast<double>(std::accumulate(prompts.begin(), prompts.end(), 0));
    }
    return t;
  }
};

RoutingResult route(const std::vector<RoutedRequest>& reqs, RoutingPolicy policy, int64_t replicas,
                    double assumed = 0, int64_t max_batch = 8) {
  RoutingConfig c;
  c.replicas = replicas;
  c.max_batch = max_batch;
  c.policy = policy;
  c.assumed_output_tokens = assumed;
  return simulate_routing(reqs, c, LinearCost());
}

TEST(Routing, OneReplicaByHand) {
  // Request 0 at t=0 (prompt 100, 3 tokens); request 1 at t=0.005 (prompt 100, 2 tokens).
  const std::vector<RoutedRequest> reqs = {{0, 0.0, 100, 3}, {1, 0.005, 100, 2}};
  const RoutingResult r = route(reqs, RoutingPolicy::kRoundRobin, 1);
  // Step 1 [0, 0.002]: prefill 0 (1 ms + 100 x 10 us), its first token. Step 2 starts at 0.002 <
  // 0.005: request 1 not there yet -> decode only, 12 ms, ends 0.014 (request 0 has 2 tokens). Step
  // 3: decode 0 + prefill 1 = 12 + 2 = 14 ms, ends 0.028: request 0 done (3 tokens), request 1 has
  // its first token. Step 4: decode 1, 12 ms, ends 0.040: request 1 done.
  EXPECT_NEAR(r.ttft_s[0], 0.002, 1e-12);
  EXPECT_NEAR(r.e2e_s[0], 0.028, 1e-12);
  EXPECT_NEAR(r.ttft_s[1], 0.028 - 0.005, 1e-12);
  EXPECT_NEAR(r.e2e_s[1], 0.040 - 0.005, 1e-12);
  EXPECT_EQ(r.steps, 4);
  EXPECT_NEAR(r.end_s, 0.040, 1e-12);
}

// The routing's step cost from the fitted predictors, by hand: decode at the decoding
// sequences' count and mean context, the prefill by its formula, a mixed step paying both,
// and a prediction below 1 us floored there (an extrapolation never gives a step for free).
TEST(PredictedStepCost, DecodeAtTheMeanContextPlusThePrefillFormula) {
  // Bilinear in batch and context, so the fit reproduces it inside the grid and beyond.
  auto t = [](double b, double c) { return 1e-3 + 2e-4 * b + 1e-6 * c + 1e-7 * b * c; };
  std::vector<StepSample> grid;
  for (double b : {1.0, 4.0})
    for (double c : {16.0, 64.0}) grid.push_back({b, c, t(b, c)});
  const BilinearStepModel model(grid);
  const PredictedStepCost cost(model, {2e-3, 1e-5, 1e-8});
  EXPECT_NEAR(cost.step_s({10, 20, 30}, {}), t(3, 20), 1e-12);
  EXPECT_NEAR(cost.step_s({}, {5, 7}), 2e-3 + 1e-5 * 12 + 1e-8 * (25 + 49), 1e-12);
  EXPECT_NEAR(cost.step_s({10}, {5}), t(1, 10) + 2e-3 + 1e-5 * 5 + 1e-8 * 25, 1e-12);
  EXPECT_EQ(cost.step_s({}, {}), 0.0);
  const PredictedStepCost negative(model, {-1.0, 0.0, 0.0});
  EXPECT_DOUBLE_EQ(negative.step_s({}, {5}), 1e-6);
}

TEST(Routing, RoundRobinCyclesAndEveryRequestFinishesOnce) {
  std::vector<RoutedRequest> reqs;
  Rng rng(5);
  double t = 0;
  for (int i = 0; i < 50; ++i) {
    t += 0.01 * rng.uniform();
    reqs.push_back(
        {i, t, 16 + static_cast<int64_t>(rng.below(200)), 1 + static_cast<int64_t>(rng.below(40))});
  }
  for (RoutingPolicy p : {RoutingPolicy::kRoundRobin, RoutingPolicy::kLeastPredicted}) {
    const RoutingResult r = route(reqs, p, 3, 0, 2);
    ASSERT_EQ(r.e2e_s.size(), reqs.size());
    int64_t tokens = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (p == RoutingPolicy::kRoundRobin) EXPECT_EQ(r.replica[i], static_cast<int64_t>(i % 3));
      EXPECT_GT(r.ttft_s[i], 0);
      EXPECT_GE(r.e2e_s[i], r.ttft_s[i]);
      tokens += reqs[i].output_tokens;
    }
    // Deterministic: the same inputs give the same outcome.
    const RoutingResult again = route(reqs, p, 3, 0, 2);
    EXPECT_EQ(again.replica, r.replica);
    EXPECT_EQ(again.e2e_s, r.e2e_s);
    (void)tokens;
  }
}

TEST(Routing, IdenticalRequestsRouteAlikeUnderBothPolicies) {
  // All at once: the predictor spreads them exactly as round robin does.
  std::vector<RoutedRequest> burst, spaced;
  for (int i = 0; i < 24; ++i) {
    burst.push_back({i, 0.0, 128, 20});
    spaced.push_back({i, 10.0 * i, 128, 20});  // each finishes long before the next arrives
  }
  for (const auto* reqs : {&burst, &spaced}) {
    const RoutingResult rr = route(*reqs, RoutingPolicy::kRoundRobin, 4);
    for (double assumed : {0.0, 20.0, 5.0}) {
      const RoutingResult lp = route(*reqs, RoutingPolicy::kLeastPredicted, 4, assumed);
      EXPECT_DOUBLE_EQ(mean(lp.e2e_s), mean(rr.e2e_s));
      EXPECT_DOUBLE_EQ(percentile(lp.e2e_s, 99), percentile(rr.e2e_s, 99));
      if (reqs == &burst) {
        EXPECT_EQ(lp.replica, rr.replica);
      }
    }
  }
}

TEST(Routing, PredictorAwareRoutingWinsOnASkewedWorkload) {
  // Long and short requests alternate: round robin sends every long one to the even replicas.
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    Rng rng(seed);
    std::vector<RoutedRequest> reqs;
    double t = 0;
    for (int i = 0; i < 200; ++i) {
      t += -std::log(1 - rng.uniform()) * 0.03;
      const bool long_one = i % 2 == 0;
      reqs.push_back({i, t, 64, long_one ? 150 + static_cast<int64_t>(rng.below(50)) : 2});
    }
    const RoutingResult rr = route(reqs, RoutingPolicy::kRoundRobin, 2, 0, 4);
    const RoutingResult lp = route(reqs, RoutingPolicy::kLeastPredicted, 2, 0, 4);
    EXPECT_LT(mean(lp.e2e_s), mean(rr.e2e_s)) << "seed " << seed;
    EXPECT_LE(percentile(lp.e2e_s, 99), percentile(rr.e2e_s, 99)) << "seed " << seed;
  }
}

TEST(Routing, BadConfigsAreErrors) {
  const std::vector<RoutedRequest> ok = {{0, 0, 1, 1}};
  EXPECT_THROW(route(ok, RoutingPolicy::kRoundRobin, 0), Error);
  EXPECT_THROW(route(ok, RoutingPolicy::kRoundRobin, 1, 0, 0), Error);
  EXPECT_THROW(route({{0, 0, 1, 0}}, RoutingPolicy::kRoundRobin, 1), Error);
  EXPECT_THROW(route({{0, 1, 1, 1}, {1, 0, 1, 1}}, RoutingPolicy::kRoundRobin, 1), Error);
}

// --- capacity -----------------------------------------------------------------------------------

TEST(Capacity, BytesPerSequenceByTheMethodsFormula) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config,
                                           "tiny-llama");  // 4 layers, 2 KV heads, head_dim 32
  const json full = resolve_method({{"name", "full"}}, "m");
  const json stream = resolve_method({{"name", "stream-512"}}, "m");
  const json kivi = resolve_method({{"name", "kivi-4"}}, "m");
  const CacheLayout kv_only{};  // K and V only here: the bookkeeping has its own test
  // bf16 full cache: 4 layers x 2 (K, V) x 2 heads x 32 x 2 bytes = 1024 bytes per token.
  SequenceKvBytes b =
      sequence_kv_bytes(*make_codec(full, at::kBFloat16), *make_policy(full), c, 600, 700, kv_only);
  EXPECT_EQ(b.per_sequence, 700u * 1024);
  EXPECT_EQ(b.held_per_layer, (std::vector<int64_t>{700, 700, 700, 700}));
  EXPECT_EQ(largest_batch(700.0 * 1024 * 5 + 1023, b), 5);
  EXPECT_EQ(largest_batch(700.0 * 1024 - 1, b), 0);
  // StreamingLLM holds 512 of 700 tokens per layer.
  b = sequence_kv_bytes(*make_codec(stream, at::kBFloat16), *make_policy(stream), c, 600, 700,
                        kv_only);
  EXPECT_EQ(b.per_sequence, 512u * 1024);
  EXPECT_EQ(b.held_per_layer, (std::vector<int64_t>{512, 512, 512, 512}));
  // ... but a layer holds all 600 while it attends the prompt, before it cuts them: on the CPU
  // cache the layers before the last are cut by then (3 x 512 + 600 tokens of 256 bytes), and
  // sequences entering one at a time need one such prefill beside the others' 512.
  const uint64_t entering = (3u * 512 + 600) * 256;
  EXPECT_EQ(b.prefill, entering);
  EXPECT_EQ(b.batch_bytes(5), 4u * 512 * 1024 + entering);
  EXPECT_EQ(largest_batch(4.0 * 512 * 1024 + entering, b), 5);
  EXPECT_EQ(largest_batch(4.0 * 512 * 1024 + entering - 1, b), 4);
  EXPECT_EQ(largest_batch(entering - 1.0, b), 0);
  // The paged cache takes the prompt's pages at every layer at once.
  CacheLayout paged_kv;
  paged_kv.paged = true;
  EXPECT_EQ(sequence_kv_bytes(*make_codec(stream, at::kBFloat16), *make_policy(stream), c, 600, 700,
                              paged_kv)
                .prefill,
            600u * 1024);
  // KIVI-4: the codec's formula per layer, its residual window included, at the largest state
  // between the prefill (600) and 700 tokens: the window folds into groups at 640, so the
  // largest is before that, not at 700.
  auto kc = make_codec(kivi, at::kBFloat16);
  b = sequence_kv_bytes(*kc, *make_policy(kivi), c, 600, 700, kv_only);
  uint64_t largest = 0;
  for (int64_t t = 600; t <= 700; ++t)
    largest = std::max(largest, kc->nominal_bytes(t, 2, 32).total());
  EXPECT_EQ(b.per_sequence, 4 * largest);
  EXPECT_GT(b.per_sequence, 4 * kc->nominal_bytes(700, 2, 32).total());
  EXPECT_LT(b.per_sequence, 700u * 1024 / 2);
  EXPECT_THROW(sequence_kv_bytes(*kc, *make_policy(kivi), c, 10, 9, kv_only), Error);
  // Plain h2o keeps 10% of the prompt each for heavy and recent: 60 + 60 of a 600-token one.
  const json h2o = resolve_method({{"name", "h2o"}}, "m");
  b = sequence_kv_bytes(*make_codec(h2o, at::kBFloat16), *make_policy(h2o), c, 600, 700, kv_only);
  EXPECT_EQ(b.held_per_layer, (std::vector<int64_t>{120, 120, 120, 120}));
  EXPECT_EQ(b.per_sequence, 120u * 1024);
}

// What an evicting policy keeps beside K and V, per held token, KV head and layer: the CPU
// cache's int64 positions (8) from the first token on; the paged cache's bound (lists and
// compacted positions, at most 4 + 8, and 4 more on the kernel path); the policy's record
// while it records (H2O 4 bytes, ScissorHands group 2 x history 32 = 64).
TEST(Capacity, BookkeepingOfTheRetentionPolicies) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny-llama");
  ASSERT_EQ(c.num_layers, 4);
  ASSERT_EQ(c.num_kv_heads, 2);
  ASSERT_EQ(c.group_size(), 2);
  const CacheLayout cpu = CacheLayout::of(false, false), paged = CacheLayout::of(true, false),
                    kernels = CacheLayout::of(true, true);
  EXPECT_TRUE(cpu.exact);
  EXPECT_FALSE(paged.exact);
  auto bytes = [&](const json& entry, const CacheLayout& index) {
    const json m = resolve_method(entry, "m");
    return sequence_kv_bytes(*make_codec(m, at::kBFloat16), *make_policy(m), c, 600, 700, index);
  };
  // H2O (plain: 60 + 60 of the 600-token prompt), evicting during decode: positions and sums
  // for 120 held tokens; while the prompt enters, for 120 at the layers that have selected and
  // all 600 at the last one, before its selection.
  SequenceKvBytes b = bytes({{"name", "h2o"}}, cpu);
  EXPECT_EQ(b.retention, 4u * 120 * 2 * (8 + 4));
  EXPECT_EQ(b.prefill_retention, (3u * 120 + 600) * 2 * (8 + 4));
  EXPECT_EQ(b.retention_per_held_token, 2u * (8 + 4));
  EXPECT_TRUE(b.retention_exact);
  const uint64_t held = b.per_sequence + b.retention, entering = b.prefill + b.prefill_retention;
  EXPECT_EQ(b.batch_bytes(3), 2 * held + std::max(held, entering));
  EXPECT_EQ(largest_batch(double(2 * held + entering), b), 3);
  EXPECT_EQ(largest_batch(double(2 * held + entering) - 1, b), 2);
  b = bytes({{"name", "h2o"}}, kernels);
  EXPECT_EQ(b.retention, 4u * 120 * 2 * (4 + 4 + 8 + 4));
  EXPECT_EQ(b.prefill_retention, (3u * 120 + 600) * 2 * (4 + 4 + 8 + 4));  // a bound in both
  EXPECT_EQ(b.retention_per_held_token, 2u * (4 + 4 + 8 + 4));
  EXPECT_FALSE(b.retention_exact);
  // Selecting once after the prefill, it records nothing afterwards: positions only, and the
  // sums of the layer being prefilled.
  b = bytes({{"name", "h2o"}, {"evict", "after_prefill"}}, cpu);
  EXPECT_EQ(b.retention, 4u * (120 + 100) * 2 * 8);  // the 100 decoded tokens stay too
  EXPECT_EQ(b.retention_per_held_token, 2u * 8);
  EXPECT_EQ(b.prefill_retention, 3u * 120 * 2 * 8 + 600u * 2 * (8 + 4));
  // ScissorHands-512: its history is 64 bytes per held token and KV head (perf-notes, session
  // 47: 294 912 measured at 512 held on this model).
  b = bytes({{"name", "scissorhands-512"}}, cpu);
  EXPECT_EQ(b.retention, 294912u);
  EXPECT_EQ(b.prefill_retention, (3u * 512 + 600) * 2 * (8 + 64));
  b = bytes({{"name", "scissorhands-512"}}, paged);
  EXPECT_EQ(b.retention, 4u * 512 * 2 * (4 + 8 + 64));
  // StreamingLLM keeps positions only; full and Quest keep nothing beside K and V.
  EXPECT_EQ(bytes({{"name", "stream-512"}}, cpu).retention, 4u * 512 * 2 * 8);
  // On the paged cache StreamingLLM's ring lists nothing (exact); selecting once after the
  // prefill (as over KIVI's codes) it holds no ring and is bounded as the listing policies are.
  for (bool kernel_path : {false, true}) {
    const json stream = resolve_method({{"name", "stream-512"}}, "m");
    b = bytes(stream, CacheLayout::for_method(stream, at::kHalf, c.head_dim, true, kernel_path));
    EXPECT_EQ(b.retention, 0u);
    EXPECT_EQ(b.prefill_retention, 0u);
    EXPECT_TRUE(b.retention_exact);
    const json kivi = resolve_method(
        {{"name", "stream-512"}, {"codec", "kivi-2"}, {"evict", "after_prefill"}}, "m");
    EXPECT_EQ(
        CacheLayout::for_method(kivi, at::kHalf, c.head_dim, true, kernel_path).after_selection,
        kernel_path ? 16u : 12u);
  }
  EXPECT_EQ(CacheLayout::for_method(resolve_method({{"name", "stream-512"}}, "m"), at::kHalf,
                                    c.head_dim, false, true)
                .after_selection,
            8u);  // the CPU cache lists its positions
  for (const char* name : {"full", "quest"}) {
    b = bytes({{"name", name}}, kernels);
    EXPECT_EQ(b.retention, 0u) << name;
    EXPECT_EQ(b.prefill_retention, 0u) << name;
    EXPECT_TRUE(b.retention_exact) << name;
  }
}

// A compacting paged cache holds slots, not each layer's kept tokens: after a compacting
// prefill, the kept tokens and one slot per decoded token (exact) until the free slots reach a
// page or an eighth of the budget and it compacts again (then a bound); every layer holds the
// longest layer's slots (PyramidKV's budgets differ by layer).
TEST(Capacity, ACompactingPagedCacheHoldsItsSlots) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny-llama");
  auto bytes = [&](const json& entry, bool paged, int64_t prompt, int64_t context) {
    const json m = resolve_method(entry, "m");
    return sequence_kv_bytes(*make_codec(m, at::kHalf), *make_policy(m), c, prompt, context,
                             CacheLayout::for_method(m, at::kHalf, c.head_dim, paged, false));
  };
  auto nominal = [&](int64_t tokens) {
    return uint64_t(c.num_layers) * make_codec(resolve_method({{"name", "full"}}, "m"), at::kHalf)
                                        ->nominal_bytes(tokens, c.num_kv_heads, c.head_dim)
                                        .total();
  };
  // The paged cache takes whole pages of 32 tokens (the 16-bit formats' pages).
  auto pages = [&](int64_t tokens) { return nominal((tokens + 31) / 32 * 32); };
  const json h2o = {{"name", "h2o-512"}};
  ASSERT_EQ(CacheLayout::for_method(resolve_method(h2o, "m"), at::kHalf, c.head_dim, true, false)
                .compacting_page,
            32);  // the 16-bit formats' pages
  // 1009-token prompts compacted to 512: 15 decoded tokens take 15 more slots, exactly (and
  // the rest of their page).
  SequenceKvBytes b = bytes(h2o, true, 1009, 1024);
  EXPECT_EQ(b.per_sequence, pages(512 + 15));
  EXPECT_TRUE(b.whole_pages);
  EXPECT_TRUE(b.kv_exact);
  EXPECT_EQ(bytes(h2o, false, 1009, 1024).per_sequence, nominal(512));  // the CPU cache's rows
  EXPECT_FALSE(bytes(h2o, false, 1009, 1024).whole_pages);
  // 191 decoded tokens reach the bound: 512 kept and at most 64 free (an eighth of 512, more
  // than a page).
  b = bytes(h2o, true, 1009, 1200);
  EXPECT_EQ(b.per_sequence, nominal(512 + 64));
  EXPECT_FALSE(b.kv_exact);
  EXPECT_EQ(b.held_per_layer, std::vector<int64_t>(4, 512));  // the policy's tokens, as before
  // A ring and KIVI's pages do not compact: their formula is the tokens held.
  EXPECT_EQ(bytes({{"name", "stream-512"}}, true, 1009, 1200).per_sequence, nominal(512));
  EXPECT_TRUE(bytes({{"name", "stream-512"}}, true, 1009, 1200).kv_exact);
  // PyramidKV after the prefill: every layer holds the longest layer's kept tokens.
  const json pyramid = {{"name", "pyramidkv"}, {"budget", 256}};
  const SequenceKvBytes cpu = bytes(pyramid, false, 1000, 1010),
                        paged = bytes(pyramid, true, 1000, 1010);
  const int64_t longest = *std::max_element(cpu.held_per_layer.begin(), cpu.held_per_layer.end());
  ASSERT_LT(*std::min_element(cpu.held_per_layer.begin(), cpu.held_per_layer.end()), longest);
  EXPECT_EQ(paged.per_sequence, pages(longest));
  EXPECT_LT(cpu.per_sequence, paged.per_sequence);
  EXPECT_TRUE(paged.kv_exact);
  // KIVI's pages list in place and free a page only once no head of any layer keeps a token in
  // it: SnapKV's per-head choice may keep every page (the bound: every token), StreamingLLM's
  // span its sinks' page and the pages from its window's start on.
  const json snapkv = {{"name", "snapkv"}, {"budget", 256}, {"codec", "kivi-4"}};
  auto kivi = [&](int64_t tokens) {
    return uint64_t(c.num_layers) * make_codec(resolve_method(snapkv, "m"), at::kHalf)
                                        ->nominal_bytes(tokens, c.num_kv_heads, c.head_dim)
                                        .total();
  };
  // KIVI-4's paged sequence per KV head and layer at head_dim 32: pages of its group, 32
  // tokens, each 512 B of key codes, a scale and a minimum per channel in fp16 (128 B), 512 B
  // of value codes and an fp16 scale and minimum per token (128 B); and beside them, from the
  // first token, its key and value rings of 128 fp16 rows (16 KiB) however few they hold.
  auto kivi_pages = [&](int64_t tokens) {
    return uint64_t(c.num_layers * c.num_kv_heads) * (uint64_t(tokens + 31) / 32 * 1280 + 16384);
  };
  ASSERT_EQ(c.head_dim, 32);
  ASSERT_EQ(CacheLayout::for_method(resolve_method(snapkv, "m"), at::kHalf, c.head_dim, true, false)
                .listing_page,
            32);  // KIVI's group
  b = bytes(snapkv, true, 1000, 1010);
  EXPECT_EQ(b.per_sequence, kivi_pages(1010));
  EXPECT_GT(kivi_pages(1010), kivi(1010));  // the formula's window is not the whole rings
  EXPECT_FALSE(b.kv_exact);
  EXPECT_LT(bytes(snapkv, false, 1000, 1010).per_sequence, kivi(1010));
  const json stream = {{"name", "streamingllm"},
                       {"sinks", 4},
                       {"window", 252},
                       {"codec", "kivi-4"},
                       {"evict", "after_prefill"}};
  // Sinks' page (32) and the window from its page's start (1000 - 252 = 748 -> 736): 32 + 264
  // slots, then the 10 decoded tokens.
  b = bytes(stream, true, 1000, 1010);
  EXPECT_EQ(b.per_sequence, kivi_pages(32 + 264 + 10));
  EXPECT_FALSE(b.kv_exact);
}

// A prefill's bookkeeping forms layer by layer: each layer's positions and records for the
// whole prompt, cut to its held state by that layer's selection before the next layer attends.
// Measured between layers on the CPU cache (exact) and the paged one (the capacity view's
// bound), the held layers' bookkeeping is what sequence_kv_bytes counts them at, and its
// prefill_retention is that of every layer but the last plus the last one's while it enters.
// The CPU cache's keys and values go the same way (prefill: the layers before the last as
// measured, the last whole); the paged cache's pages are the whole prompt's at every layer.
TEST(Capacity, PrefillBookkeepingFormsLayerByLayer) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny-llama");
  auto gen = at::detail::createCPUGenerator(7);
  const int64_t prompt = 300;
  for (const json& entry :
       {json{{"name", "h2o-512"}, {"heavy", 40}, {"recent", 40}},
        json{{"name", "h2o-512"}, {"heavy", 40}, {"recent", 40}, {"evict", "after_prefill"}},
        json{{"name", "scissorhands-512"}, {"budget", 100}, {"evict", "after_prefill"}},
        json{{"name", "scissorhands-512"}, {"budget", 100}},
        // Nothing evicted: each layer stays as it entered, its record over the whole prompt.
        json{{"name", "scissorhands-512"}, {"budget", 400}},
        json{{"name", "pyramidkv"}, {"budget", 96}}}) {
    const json m = resolve_method(entry, "m");
    for (const bool paged : {false, true}) {
      SCOPED_TRACE(m.dump() + (paged ? " paged" : " cpu"));
      const CacheLayout layout = CacheLayout::for_method(m, at::kHalf, c.head_dim, paged, false);
      const std::shared_ptr<const RetentionPolicy> policy = make_policy(m);
      const SequenceKvBytes b =
          sequence_kv_bytes(*make_codec(m, at::kHalf), *policy, c, prompt, prompt, layout);
      const uint64_t held_rate = retention_bytes_per_token(*policy, c, layout, false),
                     entering_rate = retention_bytes_per_token(*policy, c, layout, true);
      const auto cache =
          paged ? make_paged_cache(m, make_codec(m, at::kHalf), c.num_layers, c.num_kv_heads,
                                   c.head_dim, at::kHalf)
                : make_kv_cache(m, c.num_layers, c.num_kv_heads, c.head_dim, at::kHalf);
      // One layer's keys and values for the whole prompt: a policy keeping everything, per layer.
      const uint64_t whole_layer =
          sequence_kv_bytes(*make_codec(m, at::kHalf), FullRetention(), c, prompt, prompt, layout)
              .prefill /
          uint64_t(c.num_layers);
      if (paged) EXPECT_EQ(b.prefill, whole_layer * uint64_t(c.num_layers));
      const int64_t seq = cache->add_sequence();
      uint64_t counted = 0;  // the layers attended so far, at their held state
      for (int64_t l = 0; l < c.num_layers; ++l) {
        auto x = [&](int64_t heads) { return at::randn({heads, prompt, c.head_dim}, gen); };
        cache->append_and_attend(seq, l, x(c.num_heads), x(c.num_kv_heads), x(c.num_kv_heads));
        if (!paged && l + 2 == c.num_layers)
          EXPECT_EQ(b.prefill, cache->storage().total() + whole_layer);
        counted += uint64_t(b.held_per_layer[size_t(l)]) * held_rate;
        if (paged)
          EXPECT_LE(cache->retention_bytes(), counted) << "after layer " << l;
        else
          EXPECT_EQ(cache->retention_bytes(), counted) << "after layer " << l;
        if (l + 2 == c.num_layers)
          EXPECT_EQ(b.prefill_retention, counted + uint64_t(prompt) * entering_rate);
        if (b.held_per_layer[size_t(l)] == prompt && !paged)
          EXPECT_EQ(cache->retention_bytes(), uint64_t(l + 1) * prompt * entering_rate);
      }
      EXPECT_EQ(b.held_per_layer, cache->kept_tokens(seq));
      EXPECT_GT(cache->retention_bytes(), 0u);
      EXPECT_GT(entering_rate, 0u);
    }
  }
}

// The memory guard's bound per token (method_kv_bytes_per_token at a context) covers what the
// paged cache stores for one sequence of that many tokens, KIVI's rings and GEAR's exact
// buffers included: the formula's one-token bound alone (a token of KIVI's fp16 window) says
// under a ninth of it at 10 tokens.
TEST(Capacity, TheGenerationBoundCoversWhatThePagedCacheStores) {
  const ModelConfig c = parse_model_config(find_model_preset("tiny-llama").config, "tiny-llama");
  auto gen = at::detail::createCPUGenerator(5);
  for (const char* name : {"full", "int8", "fp8", "kivi-4", "kivi-2", "gear-4"}) {
    const json m = resolve_method({{"name", name}}, "m");
    for (int64_t t : {1, 10, 100, 129, 300}) {
      const auto cache = make_paged_cache(m, make_codec(m, at::kHalf), c.num_layers, c.num_kv_heads,
                                          c.head_dim, at::kHalf);
      const int64_t seq = cache->add_sequence();
      for (int64_t l = 0; l < c.num_layers; ++l) {
        auto x = [&](int64_t heads) { return at::randn({heads, t, c.head_dim}, gen); };
        cache->append_and_attend(seq, l, x(c.num_heads), x(c.num_kv_heads), x(c.num_kv_heads));
      }
      const double stored = static_cast<double>(cache->storage().total());
      const std::string what = std::string(name) + " at " + std::to_string(t);
      EXPECT_GE(method_kv_bytes_per_token(m, c, at::kHalf, true, false, t) * double(t), stored)
          << what;
      if (std::string(name) == "kivi-4" && t == 10)
        EXPECT_LT(method_kv_bytes_per_token(m, c, at::kHalf, true, false) * 10 * 9, stored);
    }
  }
}

// The suites here run on tiny-llama.
struct Harness : testing_support::Harness {
  explicit Harness(const json& suite) : testing_support::Harness(suite, "tiny-llama") {}
};

TEST(Capacity, ThroughputSuiteFindsTheLargestBatchAndMeasuresIt) {
  // 3 MiB budget, 600-token sequences: full (600 KiB each) fits 5, stream-512 (512 KiB held,
  // 598 KiB while a prompt enters) 5, kivi-4 many more, capped at max_batch 8.
  const json suite = json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 600,
      "capacity_new_tokens": 3, "kv_budget_bytes": 3145728, "max_batch": 8})");
  std::map<std::string, json> cap;
  for (const char* name : {"full", "stream-512", "kivi-4"}) {
    Harness h(suite);
    h.method = resolve_method({{"name", name}}, "methods[0]");
    ThroughputSuite s;
    CellOutput out = h.run(s);
    ASSERT_EQ(out.records.size(), 2u) << name;
    const json& r = out.records[1];
    EXPECT_EQ(r["kind"], "capacity");
    EXPECT_EQ(r["context"], 600);
    EXPECT_EQ(r["prompt_tokens"], 598);
    // The measured cache at the measured batch holds exactly what the formula counts.
    EXPECT_EQ(r["kv_memory"]["measured"]["total"].get<uint64_t>(),
              r["kv_bytes_formula"].get<uint64_t>())
        << name;
    EXPECT_TRUE(r["formula_matches_measured"].get<bool>()) << name;
    EXPECT_LE(r["kv_bytes_at_fit"].get<double>(), 3145728.0);
    EXPECT_GT(r["kv_bytes_at_fit"].get<double>() + r["bytes_per_sequence"].get<double>(),
              3145728.0);
    EXPECT_EQ(r["batch"].get<int64_t>(), std::min<int64_t>(r["max_batch_fit"].get<int64_t>(), 8));
    EXPECT_EQ(r["samples_s"].size(), 2u);
    EXPECT_GT(r["decode_tok_s"].get<double>(), 0);
    EXPECT_EQ(out.summary["capacity"]["batch"], r["batch"]);
    cap[name] = r;
  }
  EXPECT_EQ(cap["full"]["max_batch_fit"], 5);
  // stream-512 holds 512 KiB per sequence but 533.5 KiB while a prompt enters (3 layers at 512
  // tokens, the last at all 598), and its positions beside (32 KiB; 33.2 KiB entering):
  // 4 x 544 + 566.7 fit 3 MiB, 5 x 544 + 566.7 do not.
  EXPECT_EQ(cap["stream-512"]["max_batch_fit"], 5);
  EXPECT_EQ(cap["stream-512"]["prefill_bytes_per_sequence"], (3 * 512 + 598) * 256);
  EXPECT_FALSE(cap["full"]["capped"].get<bool>());
  EXPECT_GT(cap["kivi-4"]["max_batch_fit"].get<int64_t>(), 8);
  EXPECT_TRUE(cap["kivi-4"]["capped"].get<bool>());
  EXPECT_EQ(cap["kivi-4"]["batch"], 8);
}

// A capacity batch that cannot be generated (4096 sequences of 64k tokens: 256 GiB of KV) fails
// the capacity view alone: the grid's point stands, the entry says why and a warning too.
TEST(Capacity, AnUnmeasurableCapacityBatchKeepsTheGrid) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 65536,
      "capacity_new_tokens": 2, "kv_budget_bytes": 100000000000000, "max_batch": 4096})"));
  ThroughputSuite s;
  const CellOutput out = h.run(s);
  ASSERT_EQ(out.records.size(), 1u);
  EXPECT_EQ(out.records[0]["kind"], "throughput");
  EXPECT_GT(out.records[0]["decode_tok_s"].get<double>(), 0);
  const json& cap = out.summary["capacity"];
  EXPECT_EQ(cap["batch"], 4096);
  EXPECT_TRUE(cap["decode_tok_s"].is_null());
  ASSERT_TRUE(cap.contains("error"));
  EXPECT_NE(cap["error"].get<std::string>().find("capacity view; lower max_batch"),
            std::string::npos)
      << cap["error"];
  int said = 0;
  for (const auto& w : out.warnings)
    said += w.find(
                "capacity: batch 4096 of 65536-token sequences could not be measured (the "
                "grid's points stand)") != std::string::npos;
  EXPECT_EQ(said, 1) << json(out.warnings).dump();
}

// The capacity view plans the retention policies' bookkeeping and checks it against what the
// cache measured at the batch it ran: to the byte on the CPU cache, as a bound on the paged one.
TEST(Capacity, ThroughputSuitePlansTheBookkeepingItMeasures) {
  const json suite = json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 200,
      "capacity_new_tokens": 3, "kv_budget_bytes": 2097152, "max_batch": 3})");
  for (const char* attention : {"cpu", "paged"}) {
    for (const char* name : {"h2o", "scissorhands-512", "stream-512", "stream-64"}) {
      Harness h(suite);
      h.spec.attention = attention;
      // stream-64: 4 sinks and a window of 60, which the grid's 8 + 2 tokens never reach but
      // the capacity view's 200 do.
      h.method = std::string(name) == "stream-64"
                     ? resolve_method({{"name", "stream-512"}, {"window", 60}}, "methods[0]")
                     : resolve_method({{"name", name}}, "methods[0]");
      ThroughputSuite s;
      CellOutput out = h.run(s);
      ASSERT_EQ(out.records.size(), 2u) << name;
      const json& r = out.records[1];
      const std::string what = std::string(name) + " on " + attention;
      // The grid point kept every token; the capacity point did not: nothing to warn of.
      if (std::string(name) == "stream-64")
        for (const std::string& w : out.warnings)
          EXPECT_EQ(w.find("evicted nothing"), std::string::npos) << what << ": " << w;
      ASSERT_EQ(r["batch"], 3) << what;
      EXPECT_EQ(r["prefill_group"], 1) << what;  // prompts entering one at a time, as planned
      const double measured = r["kv_memory"]["retention_bytes"].get<double>();
      const double formula = r["retention_bytes_formula"].get<double>();
      EXPECT_EQ(formula, 3 * r["retention_bytes_per_sequence"].get<double>()) << what;
      // (The paged cache keeps StreamingLLM in a ring of slots: no list.)
      const bool ring =
          std::string(attention) == "paged" && std::string(name).rfind("stream", 0) == 0;
      if (!ring) EXPECT_GT(measured, 0) << what;
      if (std::string(attention) == "cpu")
        EXPECT_EQ(measured, formula) << what;
      else
        EXPECT_LE(measured, formula) << what;
      for (const std::string& w : out.warnings)
        EXPECT_EQ(w.find("bookkeeping"), std::string::npos) << what << ": " << w;
      // K and V as planned too: the paged cache's compacted slots (exact here: no recompaction
      // within 3 decoded tokens).
      EXPECT_TRUE(r["formula_matches_measured"].get<bool>()) << what;
      EXPECT_TRUE(r["kv_bytes_exact"].get<bool>()) << what;
    }
  }
}

// The paged cache's sequences take whole pages, and KIVI's its rings and GEAR's its exact
// buffers whole from the first token: the capacity view plans what it stores, empty slots
// included, to the byte (for KIVI the codec's formula counted a window of tokens where the
// rings hold 128 rows each; for GEAR the rows in use of its buffers of 20).
TEST(Capacity, ThroughputSuitePlansWholePagesAndRings) {
  const json suite = json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 200,
      "capacity_new_tokens": 3, "kv_budget_bytes": 1048576, "max_batch": 2})");
  for (const char* name : {"full", "int4", "fp8", "kivi-4", "kivi-2", "gear-4"}) {
    Harness h(suite);
    h.spec.attention = "paged";
    h.method = resolve_method({{"name", name}}, "methods[0]");
    ThroughputSuite s;
    const CellOutput out = h.run(s);
    ASSERT_EQ(out.records.size(), 2u) << name;
    const json& r = out.records[1];
    const json& m = r["kv_memory"]["measured"];
    ASSERT_TRUE(r["kv_bytes_exact"].get<bool>()) << name;
    // (GEAR: its blocks as they formed, a prefill's of 180 tokens and a decode step's of 20.)
    EXPECT_EQ(m["total"].get<double>(), r["kv_bytes_formula"].get<double>()) << name;
    EXPECT_TRUE(r["formula_matches_measured"].get<bool>()) << name;
    // 200 tokens: 7 pages of 32 hold 24 empty slots, KIVI's rings 128 - 200 % 128 = 56
    // empty key rows (its value ring is full); gear-4's buffers of 20 rows are empty at 200.
    EXPECT_GT(m["padding"].get<double>(), 0) << name;
  }
}

// Latent pages store rows of whole 32-value blocks (kvproj's rank 16 and Palu's on tiny Llama's
// head_dim 32 take 32), in whole pages, and no Palu key positions: the capacity view counts the
// bytes as stored, to the byte, where the codec's formula said half (kvproj) or 72% (Palu),
// and the cache's copies of the codec's bases (fp32, 32 wide) once beside them.
TEST(Capacity, ThroughputSuiteCountsLatentPagesAsStored) {
  const json suite = json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 200,
      "capacity_new_tokens": 3, "kv_budget_bytes": 1048576, "max_batch": 2})");
  // SnapKV over Palu's and KIVI's pages, which list in place: the bound (every token) holds.
  for (const json& entry : {json{{"name", "kvproj"}}, json{{"name", "palu"}},
                            json{{"name", "snapkv"}, {"budget", 64}, {"codec", "palu"}},
                            json{{"name", "snapkv"}, {"budget", 64}, {"codec", "kivi-4"}}}) {
    const std::string name = entry.dump();
    Harness h(suite);
    h.spec.attention = "paged";
    h.method = resolve_method(entry, "methods[0]");
    ThroughputSuite s;
    const CellOutput out = h.run(s);
    ASSERT_EQ(out.records.size(), 2u) << name;
    const json& r = out.records[1];
    const json& m = r["kv_memory"]["measured"];
    if (r["kv_bytes_exact"].get<bool>())  // whole pages: 200 tokens take 7 pages of 32
      EXPECT_EQ(m["total"].get<double>(), r["kv_bytes_formula"].get<double>()) << name;
    EXPECT_TRUE(r["formula_matches_measured"].get<bool>()) << name;
  }
}

// Decoding past a page of free slots, a compacting paged cache compacts again: its K/V bytes
// are planned as a bound (kv_bytes_exact false) that holds what it measured, and above what
// the CPU cache holds exactly for the same method.
TEST(Capacity, ThroughputSuiteBoundsAPagedCacheCompactingDuringDecode) {
  const json suite = json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 200,
      "capacity_new_tokens": 60, "kv_budget_bytes": 1048576, "max_batch": 2})");
  std::map<std::string, json> cap;
  for (const char* attention : {"cpu", "paged"}) {
    Harness h(suite);
    h.spec.attention = attention;
    h.method = resolve_method({{"name", "h2o"}}, "methods[0]");
    ThroughputSuite s;
    CellOutput out = h.run(s);
    ASSERT_EQ(out.records.size(), 2u) << attention;
    cap[attention] = out.records[1];
    EXPECT_TRUE(cap[attention]["formula_matches_measured"].get<bool>()) << attention;
    for (const std::string& w : out.warnings)
      EXPECT_EQ(w.find("the cache measured"), std::string::npos) << attention << ": " << w;
  }
  EXPECT_TRUE(cap["cpu"]["kv_bytes_exact"].get<bool>());
  EXPECT_FALSE(cap["paged"]["kv_bytes_exact"].get<bool>());
  EXPECT_GT(cap["paged"]["bytes_per_sequence"], cap["cpu"]["bytes_per_sequence"]);
  EXPECT_LE(cap["paged"]["kv_memory"]["measured"]["total"].get<double>() -
                cap["paged"]["kv_memory"]["measured"].value("padding", 0.0),
            cap["paged"]["kv_bytes_formula"].get<double>());
}

// The serving suite sizes a paged pool once, before its first request, for the budget's
// tokens (as vLLM does), and a page per slot when pages do not tile blocks (a last page past
// its blocks, which the budget holds per slot): it holds those pages from the start, does not
// grow, and stays within the budget.
TEST(Capacity, ServingReservesAPagedPoolForItsBudget) {
  // int8 (q8_0, pages of 32 tokens) on tiny-llama: 4 layers, 2 KV heads of 32; 8 blocks of 64
  // tokens: 16 pages (pages tile blocks: no slot page). Blocks of 48 with 12 pages: a page for
  // each of the 4 slots (the requests of one block each all run at once), 5 blocks of 1.5
  // pages from the other 8, whose 240 tokens take 7 whole pages beside the slots' (a
  // sequence's pages are at most its blocks' tokens / 32 + 1).
  const auto k = kernels::page_bytes(kernels::KvFormat::kInt8, true, 32, 32),
             v = kernels::page_bytes(kernels::KvFormat::kInt8, false, 32, 32);
  const double page = 4.0 * 2 * double(k.data + k.meta + v.data + v.meta);
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 4,
      "prompt_tokens_min": 8, "prompt_tokens_max": 40, "output_tokens_min": 4,
      "output_tokens_max": 8, "block_size": 64, "kv_budget_bytes": 0})");
  Harness h(suite);
  h.spec.suites[0].params["kv_budget_bytes"] = static_cast<int64_t>(16 * page);
  h.spec.attention = "paged";
  h.method = resolve_method({{"name", "int8"}}, "methods[0]");
  ServingSuite s;
  CellOutput out = h.run(s);
  ASSERT_EQ(out.summary["num_blocks"], 8) << out.summary.dump();
  EXPECT_EQ(out.summary["slot_bytes"], 0.0);
  const json& kv = out.records.at(0)["kv"];
  EXPECT_EQ(kv["allocated_bytes_peak"].get<double>(), 16 * page);
  EXPECT_GT(kv["measured_bytes_peak"].get<double>(), 0);
  h.spec.suites[0].params["block_size"] = 48;
  h.spec.suites[0].params["kv_budget_bytes"] = static_cast<int64_t>(12 * page);
  out = h.run(s);
  ASSERT_EQ(out.summary["num_blocks"], 5) << out.summary.dump();
  EXPECT_EQ(out.summary["window_blocks"], 0);
  EXPECT_EQ(out.summary["slots"], 4);
  EXPECT_EQ(out.summary["slot_bytes"], page);
  EXPECT_EQ(out.records.at(0)["kv"]["allocated_bytes_peak"].get<double>(), (7 + 4) * page);
}

// Prompts that could not fit in memory are refused before any is drawn (they used to be drawn,
// then copied, until an allocation failed).
TEST(ServingSuite, PromptsTooLargeForMemoryAreRefusedBeforeTheyAreDrawn) {
  if (available_memory_bytes() == 0) GTEST_SKIP() << "available memory unknown";
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 50000,
      "prompt_tokens_min": 1048576, "prompt_tokens_max": 1048576, "chunked_prefill": true,
      "kv_budget_bytes": 1048576})");
  Harness h(suite);
  ServingSuite s;
  try {
    h.run(s);
    FAIL() << "50000 prompts of 2^20 tokens were drawn";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("of token ids (the workload and its running copy)"),
              std::string::npos)
        << e.what();
  }
}

// The pool's charge holds what the cache measured after each step, at the peak and on average.
void expect_pool_holds_measured(const json& kv, const std::string& what) {
  EXPECT_GT(kv["measured_bytes_peak"].get<double>(), 0) << what;
  EXPECT_LE(kv["measured_bytes_peak"].get<double>(), kv["pool_bytes_peak"].get<double>()) << what;
  // (Means weighted by step times: equal ones may differ in their last bits.)
  EXPECT_LE(kv["measured_bytes_mean"].get<double>(),
            kv["pool_bytes_mean"].get<double>() * (1 + 1e-12))
      << what;
}

// The paged cache compacts what H2O keeps during decode and lets free slots grow past its
// budget between compactions: the pool charges them, so the blocks' bytes hold what the cache
// measured, step by step (peak and mean), where charging the budget alone fell short.
TEST(Capacity, ServingChargesAPagedCacheItsFreeSlots) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 3,
      "prompt_tokens_min": 40, "prompt_tokens_max": 60, "output_tokens_min": 60,
      "output_tokens_max": 80, "block_size": 32, "kv_budget_bytes": 4194304})");
  Harness h(suite);
  h.spec.attention = "paged";
  h.method = resolve_method({{"name", "h2o"}, {"heavy", 8}, {"recent", 8}}, "methods[0]");
  ServingSuite s;
  const CellOutput out = h.run(s);
  expect_pool_holds_measured(out.records.at(0)["kv"], "h2o");
}

// KIVI's paged cache holds two full-precision rings of its residual (128 rows) per sequence
// slot, allocated for every slot when the pool is reserved, and pages for every token, the
// window's too: the budget holds the slots' rings before its blocks, so what the pool allocates
// stays within it. Charged the formula's window instead (7 blocks), two requests of 80-96 tokens
// measured 1.58x their pool; charged the rings per running request (13 window blocks), the pool
// allocated the rings of every slot beyond the budget (4.32 MB for 4 MiB).
TEST(Capacity, ServingChargesKiviPagesTheirRingsPerSlot) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 2,
      "prompt_tokens_min": 80, "prompt_tokens_max": 96, "output_tokens_min": 4,
      "output_tokens_max": 8, "block_size": 32, "kv_budget_bytes": 4194304})");
  std::map<std::string, json> summary, kv;
  for (const char* attention : {"cpu", "paged"}) {
    Harness h(suite);
    h.spec.attention = attention;
    h.method = resolve_method({{"name", "kivi-4"}}, "methods[0]");
    ServingSuite s;
    const CellOutput out = h.run(s);
    summary[attention] = out.summary;
    kv[attention] = out.records.at(0)["kv"];
    expect_pool_holds_measured(kv[attention], attention);
  }
  // The rings: 2 x 128 rows x 32 channels x 2 B per KV head and layer (8), for each of the 2
  // slots (both requests run at once); blocks of 32 tokens of 10 KiB (4 layers x 2 heads x
  // 1280 B) from what is left.
  const json& paged = summary["paged"];
  EXPECT_EQ(paged["bytes_per_block"], 10240.0);
  EXPECT_EQ(paged["slot_bytes"], 2.0 * 128 * 32 * 2 * 8);
  EXPECT_EQ(paged["slots"], 2);
  EXPECT_EQ(paged["num_blocks"], (4194304 - 2 * 131072) / 10240);
  EXPECT_EQ(summary["cpu"]["slot_bytes"], 0.0);
  EXPECT_LE(kv["paged"]["allocated_bytes_peak"].get<double>(), 4194304.0);
  EXPECT_GE(kv["paged"]["pool_bytes_peak"].get<double>(), 2.0 * 131072);
}

// With more requests than the budget can run at once, the slots are as many as the blocks left
// beside their rings can run at the workload's mean request (3 blocks of 32 tokens at 80-96
// tokens): 25 slots leave 89 blocks (29 requests' worth); 26 would leave 76 (25 requests'), 24
// would run 24. The pool stays within the budget and the scheduler runs at most the slots.
TEST(Capacity, ServingBalancesKiviSlotsAgainstBlocks) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 40,
      "prompt_tokens_min": 80, "prompt_tokens_max": 88, "output_tokens_min": 2,
      "output_tokens_max": 4, "block_size": 32, "kv_budget_bytes": 4194304})");
  Harness h(suite);
  h.spec.attention = "paged";
  h.method = resolve_method({{"name", "kivi-4"}}, "methods[0]");
  ServingSuite s;
  const CellOutput out = h.run(s);
  const json& kv = out.records.at(0)["kv"];
  expect_pool_holds_measured(kv, "kivi-4");
  EXPECT_EQ(out.summary["slots"], 25);
  EXPECT_EQ(out.summary["num_blocks"], (4194304 - 25 * 131072) / 10240);
  EXPECT_EQ(out.summary["max_running"], 25);
  EXPECT_LE(kv["allocated_bytes_peak"].get<double>(), 4194304.0);
}

// Slots are balanced against what a request is charged under its retention budget, not its
// whole context: SnapKV keeping 48 of 300-320-token prompts over int4 pages of 32 in blocks of
// 16 (a spill page per slot) is charged 4 blocks at the end of a request of 2-4 new tokens,
// not 20; the blind count ran at most a fifth as many requests at once.
TEST(Capacity, ServingBalancesSlotsAgainstTheRetentionBudget) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 40,
      "prompt_tokens_min": 300, "prompt_tokens_max": 320, "output_tokens_min": 2,
      "output_tokens_max": 4, "block_size": 16, "kv_budget_bytes": 1048576})");
  Harness h(suite);
  h.spec.attention = "paged";
  h.method = resolve_method({{"name", "snapkv"}, {"budget", 48}, {"window", 8}, {"codec", "int4"}},
                            "methods[0]");
  ServingSuite s;
  const CellOutput out = h.run(s);
  const json& kv = out.records.at(0)["kv"];
  expect_pool_holds_measured(kv, "snapkv over int4");
  const json& sum = out.summary;
  ASSERT_GT(sum["slot_bytes"].get<double>(), 0);
  const int64_t slots = sum["slots"], blocks = sum["num_blocks"];
  const int64_t charged = (sum["retention_budget"].get<int64_t>() + 4 + 15) / 16;
  EXPECT_EQ(sum["window_blocks"], 0);
  EXPECT_LE(charged, 5);
  // As many slots as the blocks left can run, at most the requests: the blind count would
  // stop at blocks / 20.
  EXPECT_GE(slots, std::min<int64_t>(40, blocks / charged - 1));
  EXPECT_GT(slots, 2 * (blocks / 20));
  EXPECT_EQ(sum["max_running"], slots);
  EXPECT_LE(kv["allocated_bytes_peak"].get<double>(), 1048576.0);
}

// A trace is replayed from its first arrival: one whose lines arrive at 100-101 s reports its
// times from the first of them, and its throughput over the second it spans, not the 100 s
// before it.
TEST(Capacity, ServingReplaysATraceFromItsFirstArrival) {
  const std::string path = ::testing::TempDir() + "/kvbench_late_trace.jsonl";
  std::ofstream(path) << R"({"arrival_s": 100.0, "prompt_tokens": 8, "output_tokens": 2}
{"arrival_s": 100.5, "prompt_tokens": 8, "output_tokens": 2}
{"arrival_s": 101.0, "prompt_tokens": 8, "output_tokens": 2}
)";
  Harness h(json{
      {"name", "serving"}, {"trace_file", path}, {"block_size", 16}, {"kv_budget_bytes", 1048576}});
  h.method = resolve_method({{"name", "full"}}, "methods[0]");
  ServingSuite s;
  const CellOutput out = h.run(s);
  const json& r = out.records.at(0);
  std::vector<double> arrivals;
  for (const json& d : r["requests_detail"]) arrivals.push_back(d["arrival_s"]);
  EXPECT_EQ(arrivals, (std::vector<double>{0.0, 0.5, 1.0}));
  EXPECT_DOUBLE_EQ(r["rate"].get<double>(), 2.0);
  EXPECT_GE(r["duration_s"].get<double>(), 1.0);
  EXPECT_LT(r["duration_s"].get<double>(), 50.0);
  EXPECT_GT(r["request_throughput"].get<double>(), 3 / 50.0);
  // duration_s counts from the first line too: 0.75 s keeps the lines at 100 and 100.5.
  Harness cut(json{{"name", "serving"},
                   {"trace_file", path},
                   {"duration_s", 0.75},
                   {"block_size", 16},
                   {"kv_budget_bytes", 1048576}});
  cut.method = h.method;
  EXPECT_EQ(cut.run(s).records.at(0)["requests"], 2);
  // One arrival within duration_s: no rate to offer (null, as below two requests).
  Harness once(json::parse(R"({"name": "serving", "rates": [1], "duration_s": 0.001,
      "prompt_tokens_min": 8, "prompt_tokens_max": 8, "output_tokens_min": 2,
      "output_tokens_max": 2, "block_size": 16, "kv_budget_bytes": 1048576})"));
  once.method = h.method;
  const json single = once.run(s).records.at(0);
  EXPECT_EQ(single["requests"], 1);
  EXPECT_TRUE(single["offered_rate"].is_null()) << single["offered_rate"];
}

// burstiness reaches the arrivals: a rate's requests arrive at the gamma process's times, and
// the record names its arrivals "gamma".
TEST(Capacity, ServingArrivesWithTheConfiguredBurstiness) {
  Harness h(json::parse(R"({"name": "serving", "rates": [50], "requests": 6, "burstiness": 0.5,
      "prompt_tokens_min": 8, "prompt_tokens_max": 8, "output_tokens_min": 2,
      "output_tokens_max": 2, "block_size": 16, "kv_budget_bytes": 1048576})"));
  h.method = resolve_method({{"name", "full"}}, "methods[0]");
  ServingSuite s;
  const json r = h.run(s).records.at(0);
  EXPECT_EQ(r["arrivals"], "gamma");
  std::vector<double> arrivals;
  for (const json& d : r["requests_detail"]) arrivals.push_back(d["arrival_s"]);
  EXPECT_EQ(arrivals, poisson_arrivals(6, 50.0, h.spec.seed + 1, 0.5));
  EXPECT_NE(arrivals, poisson_arrivals(6, 50.0, h.spec.seed + 1));
}

// sharegpt_output "filter" skips a conversation whose reply is outside output_tokens_min..max
// (as vLLM's benchmark does) where "clamp" keeps it at the nearer bound.
TEST(Capacity, ServingFiltersShareGptRepliesOutsideTheOutputRange) {
  const std::string file =
      std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/serving/sharegpt.json";
  Harness probe(json{{"name", "serving"}});
  const Tokenizer& tok = probe.model.tokenizer();
  const ShareGptData data = load_sharegpt(file);
  std::vector<int64_t> replies;
  for (const auto& c : data.conversations)
    replies.push_back(static_cast<int64_t>(tok.encode(c.reply, false).size()));
  std::vector<int64_t> sorted = replies;
  std::sort(sorted.begin(), sorted.end());
  // A range holding some replies but not all.
  const int64_t omin = sorted[1], omax = sorted[sorted.size() - 2];
  ASSERT_LT(sorted.front(), omin);
  ASSERT_GT(sorted.back(), omax);
  std::set<int64_t> inside;
  for (int64_t r : replies)
    if (r >= omin && r <= omax) inside.insert(r);
  for (const char* mode : {"filter", "clamp"}) {
    Harness h(json{{"name", "serving"},
                   {"sharegpt_file", file},
                   {"sharegpt_output", mode},
                   {"rates", {0}},
                   {"requests", 12},
                   {"prompt_tokens_min", 1},
                   {"prompt_tokens_max", 4096},
                   {"output_tokens_min", omin},
                   {"output_tokens_max", omax},
                   {"max_batch_tokens", 8192},
                   {"block_size", 16},
                   {"kv_budget_bytes", 16 << 20}});
    h.method = resolve_method({{"name", "full"}}, "methods[0]");
    ServingSuite s;
    const CellOutput out = h.run(s);
    std::set<int64_t> outputs;
    for (const json& d : out.records.at(0)["requests_detail"])
      outputs.insert(d["output_tokens"].get<int64_t>());
    if (std::string(mode) == "filter") {
      EXPECT_EQ(out.summary["sharegpt_conversations"].get<size_t>(),
                static_cast<size_t>(std::count_if(replies.begin(), replies.end(), [&](int64_t r) {
                  return r >= omin && r <= omax;
                })));
      EXPECT_EQ(outputs, inside);  // each reply's own length, none at a clamped bound only
    } else {
      EXPECT_EQ(out.summary["sharegpt_conversations"].get<size_t>(), replies.size());
      EXPECT_TRUE(outputs.count(omin) && outputs.count(omax));
    }
  }
}

// A request that could never run, even alone, fails the cell before anything is served, and a
// trace's names its file:line (it used to fail only when it arrived, as "request N").
TEST(Capacity, ServingRefusesARequestThatCanNeverRunBeforeServing) {
  const std::string path = ::testing::TempDir() + "/kvbench_long_line.jsonl";
  std::ofstream(path) << R"({"arrival_s": 0.0, "prompt_tokens": 8, "output_tokens": 2}
{"arrival_s": 5000.0, "prompt_tokens": 8, "output_tokens": 2}
{"arrival_s": 9000.0, "prompt_tokens": 300, "output_tokens": 2}
)";
  const auto error_of = [](Harness& h) {
    ServingSuite s;
    try {
      h.run(s);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  Harness h(json{{"name", "serving"},
                 {"trace_file", path},
                 {"block_size", 16},
                 {"max_batch_tokens", 256},
                 {"kv_budget_bytes", 1048576}});
  h.method = resolve_method({{"name", "full"}}, "methods[0]");
  std::string e = error_of(h);
  EXPECT_NE(e.find("serving: trace_file: " + path +
                   ":3 (300 prompt + 2 output tokens) can need "
                   "a prefill of 301 tokens, more than max_batch_tokens = 256"),
            std::string::npos)
      << e;
  // A pool too small for the line: its blocks, with the line.
  Harness small(json{{"name", "serving"},
                     {"trace_file", path},
                     {"block_size", 16},
                     {"chunked_prefill", true},
                     {"kv_budget_bytes", 65536}});
  small.method = h.method;
  e = error_of(small);
  EXPECT_NE(e.find("serving: trace_file: " + path +
                   ":3 (300 prompt + 2 output tokens) can need 19 "
                   "blocks of 16 tokens but the KV pool has only"),
            std::string::npos)
      << e;
}

// A policy selecting once after the prefill keeps its record only for the layer being
// prefilled: its blocks are charged the index alone, and the budget sets aside the record of
// the most tokens a step prefills once (a paged pool reserves every block's pages, so blocks a
// prefill held would not make room). ScissorHands over int4 then holds more blocks than at
// decode timing, whose blocks carry the record; the pool holds what the cache measured.
TEST(Capacity, ServingSetsAsideWhatAStepsPrefillsRecord) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 6,
      "prompt_tokens_min": 300, "prompt_tokens_max": 320, "output_tokens_min": 2,
      "output_tokens_max": 8, "block_size": 16, "kv_budget_bytes": 1048576,
      "max_batch_tokens": 700})");
  for (const bool paged : {false, true}) {
    std::map<std::string, json> sums;
    for (const char* evict : {"after_prefill", "decode"}) {
      const std::string what = std::string(evict) + (paged ? " paged" : " cpu");
      Harness h(suite);
      if (paged) h.spec.attention = "paged";
      h.method = resolve_method({{"name", "scissorhands"},
                                 {"budget", 48},
                                 {"recent", 8},
                                 {"history", 32},
                                 {"codec", "int4"},
                                 {"evict", evict}},
                                "methods[0]");
      ServingSuite s;
      const CellOutput out = h.run(s);
      const json& kv = out.records.at(0)["kv"];
      expect_pool_holds_measured(kv, what);
      const json& sum = sums[evict] = out.summary;
      EXPECT_LE(kv["retention_bytes_peak"].get<double>(),
                kv["blocks_peak"].get<double>() * sum["retention_bytes_per_block"].get<double>())
          << what;
      const double reserve = sum["prefill_retention_reserve_bytes"];
      // tiny-llama: 2 KV heads x group 2 x history 32 bools per token, one layer.
      EXPECT_EQ(sum["prefill_retention_bytes_per_token"].get<double>(),
                std::string(evict) == "decode" ? 0.0 : 2.0 * 64)
          << what;
      EXPECT_EQ(reserve, sum["prefill_retention_bytes_per_token"].get<double>() * 700) << what;
      const double left = 1048576.0 - reserve - sum["shared_bytes"].get<double>() -
                          sum["slots"].get<double>() * sum["slot_bytes"].get<double>();
      EXPECT_EQ(sum["num_blocks"].get<int64_t>(),
                BlockPool::capacity(left, sum["bytes_per_block"].get<double>() +
                                              sum["retention_bytes_per_block"].get<double>()))
          << what;
      EXPECT_LE(kv["pool_bytes_peak"].get<double>(), 1048576.0) << what;
      if (paged) EXPECT_LE(kv["allocated_bytes_peak"].get<double>() + reserve, 1048576.0) << what;
    }
    EXPECT_GT(sums["after_prefill"]["num_blocks"].get<int64_t>(),
              2 * sums["decode"]["num_blocks"].get<int64_t>());
  }
}

// StreamingLLM over pages listed in place (Palu's, KIVI's) holds its sinks' pages and every
// page from its window's first token on: up to 28 slots past its 4 sinks and 31 before its
// window's start at pages of 32, charged on top of its budget (4 + 40 sinks and window, prompts
// of 90-120 tokens), where charging the budget alone fell short of what the pages held.
TEST(Capacity, ServingChargesASpanThePagesItStraddles) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 3,
      "prompt_tokens_min": 90, "prompt_tokens_max": 120, "output_tokens_min": 8,
      "output_tokens_max": 40, "block_size": 16, "kv_budget_bytes": 4194304})");
  for (const char* codec : {"palu", "kivi-4"}) {
    for (const char* evict : {"decode", "after_prefill"}) {
      if (std::string(codec) == "kivi-4" && std::string(evict) == "decode") continue;  // refused
      Harness h(suite);
      h.spec.attention = "paged";
      h.method = resolve_method({{"name", "streamingllm"},
                                 {"sinks", 4},
                                 {"window", 40},
                                 {"evict", evict},
                                 {"codec", codec}},
                                "methods[0]");
      ServingSuite s;
      const CellOutput out = h.run(s);
      const std::string what = std::string(codec) + ", " + evict;
      EXPECT_EQ(out.summary["retention_budget"], 44 + 28 + 31) << what;
      expect_pool_holds_measured(out.records.at(0)["kv"], what);
    }
  }
}

// Every paged format's pool holds what its cache measures, at blocks that are and are not
// multiples of its page: whole pages, KIVI's rings, fp8's scales, Quest's page bounds (which
// the pool left out before 2026-12-06: 3% of tiny Llama's K/V past its dense layers), Palu's
// latent pages and bases, GEAR's blocks and exact buffers; and what the pool allocates stays
// within the budget.
TEST(Capacity, ServingPoolsHoldWhatEveryPagedFormatMeasures) {
  for (const char* block : {"16", "32", "48"}) {
    const json suite = json::parse(std::string(R"({"name": "serving", "rates": [0],
        "requests": 3, "prompt_tokens_min": 40, "prompt_tokens_max": 150,
        "output_tokens_min": 4, "output_tokens_max": 24, "kv_budget_bytes": 4194304,
        "block_size": )") + block + "}");
    for (const char* name :
         {"full", "int8", "int4", "fp8", "kivi-4", "quest-1024", "palu", "gear-4"}) {
      Harness h(suite);
      h.spec.attention = "paged";
      h.method = resolve_method({{"name", name}}, "methods[0]");
      ServingSuite s;
      const CellOutput out = h.run(s);
      const std::string what = std::string(name) + ", blocks of " + block;
      expect_pool_holds_measured(out.records.at(0)["kv"], what);
      // Pages, slots (rings, scales, last pages) and the fitted bases: within the budget.
      EXPECT_LE(out.records.at(0)["kv"]["allocated_bytes_peak"].get<double>(), 4194304.0) << what;
      // fp8's scales (two fp32 per KV head and layer) are its slot's, not a window block; with
      // blocks that are not whole pages of 32, a page is too.
      if (std::string(name) == "fp8") {
        EXPECT_EQ(out.summary["window_blocks"], 0) << what;
        const double scales = 8.0 * 2 * 4, slot = out.summary["slot_bytes"].get<double>();
        if (std::string(block) == "32")
          EXPECT_EQ(slot, scales) << what;
        else
          EXPECT_GT(slot, scales) << what;
      }
    }
  }
}

// SnapKV over KIVI's pages on the paged cache keeps some token of nearly every page: the pool
// charges every token (retention_budget 0), where the CPU cache frees what SnapKV drops.
TEST(Capacity, ServingChargesEveryTokenOfPagesListedInPlace) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 2,
      "prompt_tokens_min": 80, "prompt_tokens_max": 96, "output_tokens_min": 4,
      "output_tokens_max": 8, "block_size": 32, "kv_budget_bytes": 4194304})");
  for (const char* attention : {"cpu", "paged"}) {
    Harness h(suite);
    h.spec.attention = attention;
    h.method =
        resolve_method({{"name", "snapkv"}, {"budget", 48}, {"codec", "kivi-4"}}, "methods[0]");
    ServingSuite s;
    const CellOutput out = h.run(s);
    EXPECT_EQ(out.summary["retention_budget"], std::string(attention) == "paged" ? 0 : 48)
        << attention;
    expect_pool_holds_measured(out.records.at(0)["kv"], attention);
  }
}

// A cache keeping its storage per sequence (the CPU stores) is reserved per request as the
// scheduler admits it, for its prompt and output less the last token (sampled, never
// entered): at its last step it occupies exactly what it holds (growing by doubling instead,
// it would occupy 80 rows for 47 held). The retention policy's bookkeeping is reported beside
// (stream-512 keeps all 47: an int64 position per token, KV head and layer), none without one.
TEST(Capacity, ServingSizesPerSequenceStoresForEachRequest) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 1,
      "prompt_tokens_min": 40, "prompt_tokens_max": 40, "output_tokens_min": 8,
      "output_tokens_max": 8, "block_size": 16, "kv_budget_bytes": 4194304})");
  for (const char* name : {"int8", "full", "stream-512"}) {
    Harness h(suite);
    h.method = resolve_method({{"name", name}}, "methods[0]");
    ServingSuite s;
    CellOutput out = h.run(s);
    const json& kv = out.records.at(0)["kv"];
    const double held = kv["measured_bytes_peak"].get<double>(),
                 allocated = kv["allocated_bytes_peak"].get<double>();
    EXPECT_GT(held, 0) << name;
    EXPECT_EQ(allocated, held) << name;
    EXPECT_EQ(kv["retention_bytes_peak"].get<double>(),
              std::string(name) == "stream-512" ? 4.0 * 2 * 47 * 8 : 0.0)
        << name;
  }
}

// Under a retention policy the CPU stores take what a layer holds before its first eviction,
// then give back what the policy dropped: a policy evicting every decode step keeps one row per
// store beyond its budget (the new token enters before the oldest leaves; while prefill chunks
// come, a chunk's rows), one evicting after the prefill keeps room for the rest of the request,
// and a budget above the request sizes the stores for the request. Growing by doubling
// instead, the stores kept the prompt's rows (and chunked prefill doubled them), far above the
// tokens held and the pool's charge.
TEST(Capacity, ServingStoresGiveBackWhatRetentionDrops) {
  const json suite = json::parse(R"({"name": "serving", "rates": [0], "requests": 1,
      "prompt_tokens_min": 40, "prompt_tokens_max": 40, "output_tokens_min": 8,
      "output_tokens_max": 8, "block_size": 16, "kv_budget_bytes": 4194304})");
  struct Case {
    json method;
    bool chunked;
    double spare;  // the most allocated / held may be at the peak
    bool exact;    // ... and what it is, where every byte scales with the rows
  };
  const json stream = {{"name", "streamingllm"}, {"sinks", 4}, {"window", 12}};  // keeps 16
  auto with = [](json m, const char* codec) { return m["codec"] = codec, m; };
  const Case cases[] = {
      {stream, false, 17.0 / 16, true},
      // Chunks of 16: room for one beside the 16 kept while they come.
      {with(stream, "int8"), true, 32.0 / 16, true},
      {{{"name", "snapkv"}, {"budget", 16}, {"window", 4}}, false, 1.0, true},
      // fp8's per-sequence scales and Palu's latent rows do not scale with the rows.
      {with(stream, "fp8"), false, 17.0 / 16, false},
      {with(stream, "palu-70"), false, 17.0 / 16, false},
      {{{"name", "snapkv"}, {"budget", 16}, {"window", 4}, {"codec", "kivi-4"}}, false, 1.0, true},
      {{{"name", "streamingllm"}, {"sinks", 4}, {"window", 60}}, false, 1.0, true},
      {{{"name", "snapkv"}, {"budget", 64}, {"window", 4}}, false, 1.0, true},
      // 20% of the 40-token prompt each: 8 + 8 kept, as the stream's 16.
      {{{"name", "h2o"}, {"heavy_ratio", 0.2}, {"recent_ratio", 0.2}}, false, 2.0, false},
  };
  for (const Case& c : cases) {
    Harness h(suite);
    h.spec.suites[0].params["chunked_prefill"] = c.chunked;
    h.spec.suites[0].params["prefill_chunk_tokens"] = 16;
    h.method = resolve_method(c.method, "methods[0]");
    ServingSuite s;
    CellOutput out = h.run(s);
    const json& kv = out.records.at(0)["kv"];
    const double held = kv["measured_bytes_peak"].get<double>(),
                 allocated = kv["allocated_bytes_peak"].get<double>();
    ASSERT_GT(held, 0) << c.method.dump();
    EXPECT_GE(allocated, held) << c.method.dump() << " " << kv.dump();
    EXPECT_LE(allocated / held, c.spare + 1e-9) << c.method.dump() << " " << kv.dump();
    if (c.exact) EXPECT_NEAR(allocated / held, c.spare, 1e-9) << c.method.dump();
  }
}

TEST(Capacity, ABudgetBelowOneSequenceWarnsAndKeepsTheGrid) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
      "new_tokens": [2], "warmup": 0, "repeats": 1, "capacity_context": 600,
      "kv_budget_bytes": 1000})"));
  ThroughputSuite s;
  CellOutput out = h.run(s);
  EXPECT_EQ(out.records.size(), 1u);
  EXPECT_EQ(out.summary["capacity"]["max_batch_fit"], 0);
  ASSERT_FALSE(out.warnings.empty());
  EXPECT_NE(out.warnings.back().find("kv_budget_bytes"), std::string::npos);
}

// --- length shift -----------------------------------------------------------------------------

TEST(LengthShift, RowsPerTaskInFirstAppearanceOrder) {
  const std::string path = ::testing::TempDir() + "/kvbench_tasks.jsonl";
  {
    std::ofstream f(path);
    f << R"({"prompt": "the cat sat", "task": "b"})"
      << "\n"
      << R"({"prompt": "a dog ran far", "task": "a"})"
      << "\n"
      << R"({"prompt": "one two three"})"
      << "\n"
      << R"({"prompt": "red green blue", "task": "b"})"
      << "\n";
  }
  Harness h(json{{"name", "output_length"},
                 {"prompts_file", path},
                 {"max_new_tokens", 6},
                 {"control_temperatures", json::array()},
                 {"control_seeds", 0}});
  OutputLengthSuite s;
  CellOutput out = h.run(s);
  const json& tasks = out.summary["tasks"];
  ASSERT_EQ(tasks.size(), 3u);
  EXPECT_EQ(tasks[0]["task"], "b");
  EXPECT_EQ(tasks[0]["samples"], 2);
  EXPECT_EQ(tasks[1]["task"], "a");
  EXPECT_EQ(tasks[2]["task"], "");
  // The full cache against itself: the same lengths, ratio 1, no shift.
  for (const json& t : tasks) {
    EXPECT_DOUBLE_EQ(t["length_ratio"].get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(t["median_length_ratio"].get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(t["d_mean"].get<double>(), 0.0);
  }
  // Task b's numbers are its two samples' (records 0 and 3).
  const double l0 = out.records[0]["length_full"], l3 = out.records[3]["length_full"];
  EXPECT_DOUBLE_EQ(tasks[0]["mean_length_baseline"].get<double>(), (l0 + l3) / 2);
  EXPECT_EQ(out.records[1]["task"], "a");
  EXPECT_DOUBLE_EQ(out.summary["median_length_ratio"].get<double>(), 1.0);
}

TEST(LengthShift, ANonStringTaskNamesTheLine) {
  const std::string path = ::testing::TempDir() + "/kvbench_bad_task.jsonl";
  {
    std::ofstream f(path);
    f << R"({"prompt": "x", "task": 3})"
      << "\n";
  }
  Harness h(json{{"name", "output_length"}, {"prompts_file", path}});
  OutputLengthSuite s;
  try {
    h.run(s);
    FAIL() << "a numeric task must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":1: \"task\": expected a string, got 3"),
              std::string::npos)
        << e.what();
  }
}

// --- predictor suite ----------------------------------------------------------------------------

TEST(PredictorSuite, ProfilesFitsAndRoutes) {
  Harness h(json::parse(R"({"name": "predictor", "batch": [1, 2, 4], "context": [16, 32, 64],
      "steps": 2, "repeats": 2, "warmup": 0, "routing_requests": 40, "routing_replicas": 2,
      "routing_prompt_tokens_min": 16, "routing_prompt_tokens_max": 48,
      "routing_output_tokens_min": 2, "routing_output_tokens_max": 16})"));
  PredictorSuite s;
  CellOutput out = h.run(s);
  size_t grid = 0, heldout = 0, routing = 0;
  for (const json& r : out.records) {
    if (r["kind"] == "step_profile") {
      EXPECT_EQ(r["samples_s"].size(), 4u);  // 2 steps x 2 repeats
      EXPECT_DOUBLE_EQ(r["step_s"].get<double>(),
                       median(r["samples_s"].get<std::vector<double>>()));
      (r["role"] == "grid" ? grid : heldout) += 1;
      if (r["role"] == "grid") {  // bilinear passes through the grid's medians
        EXPECT_NEAR(r["accuracy"]["bilinear"].get<double>(), 1.0, 1e-9);
      }
    } else {
      EXPECT_EQ(r["kind"], "routing");
      EXPECT_EQ(r["samples_s"].size(), 40u);
      EXPECT_EQ(r["rate_source"], "routing_load");  // routing_rate 0: this method's own load
      ++routing;
    }
  }
  EXPECT_EQ(grid, 9u);
  EXPECT_EQ(heldout, 2u);  // batch 3 (between 2 and 4; none between 1 and 2) x contexts 23, 45
  EXPECT_EQ(routing, 3u);
  EXPECT_EQ(out.summary["heldout_points"], json::parse("[[3, 23], [3, 45]]"));
  EXPECT_EQ(out.summary["models"]["bilinear"]["heldout_accuracy"]["points"], 2);
  EXPECT_LE(out.summary["accuracy_mean"].get<double>(), 1.0);
  const json& routing_summary = out.summary["routing"];
  EXPECT_EQ(routing_summary["replicas"], 2);
  for (const auto& w : out.warnings) EXPECT_EQ(w.find("past the profiled grid"), std::string::npos);
  EXPECT_EQ(routing_summary["max_batch"], 4);
  EXPECT_GT(routing_summary["rate"].get<double>(), 0);
  EXPECT_TRUE(routing_summary["policies"].contains("least_predicted"));
  // compare reads what the suite writes: every step point and the accuracy, no regression
  // against itself.
  const json cell = {{"id", "p.real"},        {"suite", "predictor"}, {"method", h.method},
                     {"params", json({})},    {"status", "ok"},       {"records", out.records},
                     {"summary", out.summary}};
  const json report = {{"cells", {cell}}};
  CompareOptions o;
  o.thresholds = parse_thresholds({});
  const CompareResult r = compare_reports(report, report, o);
  std::map<std::string, size_t> count;
  for (const MetricComparison& c : r.comparisons) ++count[c.metric];
  EXPECT_EQ(count,
            (std::map<std::string, size_t>{{"predictor_accuracy", 1}, {"predictor_step", 11}}));
  EXPECT_EQ(r.regressions(), 0u);
}

// One generation per point gives a zero-width interval of its median: the noise is not known,
// and is written as null rather than 0.
TEST(PredictorSuite, OneGenerationPerPointMeasuresNoNoise) {
  const std::string grid = R"("name": "predictor", "batch": [1, 2], "context": [16, 32],
      "steps": 2, "warmup": 0, "routing_requests": 4, "routing_prompt_tokens_min": 16,
      "routing_prompt_tokens_max": 20, "routing_output_tokens_min": 2,
      "routing_output_tokens_max": 4)";
  for (const int repeats : {1, 5, 6}) {
    Harness h(json::parse("{" + grid + ", \"repeats\": " + std::to_string(repeats) + "}"));
    PredictorSuite s;
    const CellOutput out = h.run(s);
    EXPECT_EQ(out.summary["noise"].is_null(), repeats < 6);
    // Requests of up to 20 + 4 - 1 tokens in a grid of contexts up to 32, batch 2: inside.
    for (const auto& w : out.warnings)
      EXPECT_EQ(w.find("past the profiled grid"), std::string::npos) << w;
    EXPECT_EQ(out.summary["noise_max"].is_null(), repeats < 6);
    for (const json& r : out.records) {
      if (r["kind"] != "step_profile") continue;
      EXPECT_EQ(r["relative_ci95"].is_null(), repeats < 6);
      EXPECT_EQ(r["time_s"]["median_ci95"].is_null(), repeats < 6);
    }
  }
}

// Routing past the grid (a larger batch, longer requests) runs on extrapolated step costs: said.
TEST(PredictorSuite, RoutingPastTheGridIsWarnedAbout) {
  Harness h(json::parse(R"({"name": "predictor", "batch": [1, 2], "context": [16, 32],
      "steps": 1, "repeats": 1, "warmup": 0, "routing_requests": 4, "routing_max_batch": 8,
      "routing_prompt_tokens_min": 16, "routing_prompt_tokens_max": 40,
      "routing_output_tokens_min": 2, "routing_output_tokens_max": 4})"));
  PredictorSuite s;
  const CellOutput out = h.run(s);
  bool said = false;
  for (const auto& w : out.warnings)
    said = said || w.find(
                       "routing goes past the profiled grid (batches up to 8, grid to 2; "
                       "contexts up to 43, grid to 32)") != std::string::npos;
  EXPECT_TRUE(said) << json(out.warnings).dump();
  // Below the grid too: a replica's batch runs from 1, a request's decode from its prompt.
  Harness low(json::parse(R"({"name": "predictor", "batch": [2, 4], "context": [16, 32],
      "steps": 1, "repeats": 1, "warmup": 0, "routing_requests": 4, "routing_max_batch": 4,
      "routing_prompt_tokens_min": 8, "routing_prompt_tokens_max": 16,
      "routing_output_tokens_min": 2, "routing_output_tokens_max": 4})"));
  const CellOutput below = low.run(s);
  said = false;
  for (const auto& w : below.warnings)
    said = said || w.find(
                       "routing goes past the profiled grid (batches from 1, grid from 2; "
                       "contexts from 8, grid from 16)") != std::string::npos;
  EXPECT_TRUE(said) << json(below.warnings).dump();
}

// A point's decode steps run at context, context + 1, ...: the fits place its time at their
// mean context, which the record states, and predict it there.
TEST(PredictorSuite, APointsTimeIsPlacedAtItsStepsMeanContext) {
  Harness h(json::parse(R"({"name": "predictor", "batch": [1, 2], "context": [16, 32],
      "steps": 5, "repeats": 1, "warmup": 0, "routing_requests": 0})"));
  PredictorSuite s;
  const CellOutput out = h.run(s);
  for (const json& r : out.records) {
    if (r["kind"] != "step_profile") continue;
    EXPECT_DOUBLE_EQ(r["mean_context"].get<double>(), r["context"].get<double>() + 2.0);
    // Grid points: the bilinear fit passes through its nodes, at their mean contexts.
    if (r["role"] == "grid")
      EXPECT_NEAR(r["predicted_s"]["bilinear"].get<double>(), r["step_s"].get<double>(),
                  1e-9 * r["step_s"].get<double>());
  }
  EXPECT_EQ(out.summary["models"]["bilinear"]["fit"]["context"], json({18.0, 34.0}));
  EXPECT_EQ(out.summary["grid"]["context"], json({16, 32}));  // the grid as asked
}

// Refused when the suite's parameters are resolved (validate), before any run.
TEST(PredictorSuite, HeldOutPointsOutsideTheGridAreConfigErrors) {
  try {
    Harness h(json::parse(R"({"name": "predictor", "batch": [1, 2], "context": [16, 32],
        "heldout_batch": [3], "steps": 1, "repeats": 1, "routing_requests": 0})"));
    FAIL() << "a held-out batch outside the grid must be refused";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("heldout_batch"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace kvbench
