// Statistics against values computed by hand, and the Wilcoxon test against scipy's
// (tests/fixtures/stats/wilcoxon.json, written by scripts/stats_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"
#include "kvbench/core/stats.h"

namespace kvbench {
namespace {

const std::vector<double> kSample = {2, 4, 4, 4, 5, 5, 7, 9};

TEST(Stats, MeanAndSampleStddev) {
  EXPECT_DOUBLE_EQ(mean(kSample), 5.0);
  // Sum of squared deviations is 32; sample variance 32 / 7.
  EXPECT_NEAR(stddev(kSample), std::sqrt(32.0 / 7.0), 1e-12);
  EXPECT_DOUBLE_EQ(stddev({3.0}), 0.0);
}

TEST(Stats, PercentilesInterpolateBetweenClosestRanks) {
  EXPECT_DOUBLE_EQ(median(kSample), 4.5);  // (4 + 5) / 2
  EXPECT_DOUBLE_EQ(percentile(kSample, 0), 2.0);
  EXPECT_DOUBLE_EQ(percentile(kSample, 100), 9.0);
  EXPECT_NEAR(percentile(kSample, 90), 7.6, 1e-12);   // rank 6.3: 7 + 0.3 * (9 - 7)
  EXPECT_NEAR(percentile(kSample, 99), 8.86, 1e-12);  // rank 6.93: 7 + 0.93 * 2
  EXPECT_DOUBLE_EQ(percentile({1, 2, 3, 4}, 25), 1.75);
  EXPECT_DOUBLE_EQ(median({3, 1, 2}), 2.0);  // unsorted input
}

TEST(Stats, EmptyOrInvalidInputIsAnError) {
  EXPECT_THROW(mean({}), Error);
  EXPECT_THROW(percentile({}, 50), Error);
  EXPECT_THROW(percentile({1.0}, 101), Error);
  EXPECT_THROW(summarize({}), Error);
}

TEST(Stats, BootstrapOfDegenerateSamples) {
  Interval one = bootstrap_median_ci({3.5});
  EXPECT_DOUBLE_EQ(one.low, 3.5);
  EXPECT_DOUBLE_EQ(one.high, 3.5);
  Interval same = bootstrap_median_ci({2, 2, 2, 2});
  EXPECT_DOUBLE_EQ(same.low, 2.0);
  EXPECT_DOUBLE_EQ(same.high, 2.0);
  // Resampling {0, 1}: medians 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5th and
  // 97.5th percentiles of 2000 resample medians are 0 and 1.
  Interval pair = bootstrap_median_ci({0, 1});
  EXPECT_DOUBLE_EQ(pair.low, 0.0);
  EXPECT_DOUBLE_EQ(pair.high, 1.0);
}

TEST(Stats, BootstrapMatchesOrderStatisticInterval) {
  // For x = 1..101 the median is 51 and the classic order-statistic 95% interval is
  // 51 -/+ 1.96 * sqrt(101) / 2 ~= 51 -/+ 9.8 ranks; the bootstrap must land close to it.
  std::vector<double> x;
  for (int i = 1; i <= 101; ++i) x.push_back(i);
  Interval ci = bootstrap_median_ci(x, 0.95, 4000, 7);
  EXPECT_GE(ci.low, 38);
  EXPECT_LE(ci.low, 45);
  EXPECT_GE(ci.high, 57);
  EXPECT_LE(ci.high, 64);
}

TEST(Stats, BootstrapIsSeeded) {
  std::vector<double> x = {1.2, 3.4, 2.2, 9.1, 4.4, 0.3, 5.5, 2.9, 7.7, 6.1};
  Interval a = bootstrap_median_ci(x, 0.95, 500, 42);
  Interval b = bootstrap_median_ci(x, 0.95, 500, 42);
  EXPECT_EQ(a.low, b.low);
  EXPECT_EQ(a.high, b.high);
  EXPECT_LE(a.low, median(x));
  EXPECT_GE(a.high, median(x));
}

TEST(Stats, SummaryToJsonKeepsEveryField) {
  Summary s = summarize(kSample, 1);
  EXPECT_EQ(s.n, 8u);
  EXPECT_DOUBLE_EQ(s.min, 2);
  EXPECT_DOUBLE_EQ(s.max, 9);
  auto j = to_json(s);
  for (const char* key :
       {"n", "mean", "stddev", "min", "max", "median", "p50", "p90", "p99", "median_ci95"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_DOUBLE_EQ(j["p50"].get<double>(), 4.5);
  EXPECT_EQ(j["median_ci95"].size(), 2u);
  // One resampled run (a single sample, or one generation's block): a zero-width interval by
  // construction, written as null rather than read as no noise.
  EXPECT_TRUE(to_json(summarize({3.0})).at("median_ci95").is_null());
  EXPECT_TRUE(to_json(summarize(kSample, 1, kSample.size())).at("median_ci95").is_null());
}

// The distribution-free interval's ranks are the binomial table's (Conover, Practical
// Nonparametric Statistics, table A3): 1 and 6 of 6, 2 and 9 of 10, 6 and 15 of 20, 40 and 61 of
// 100; on 1..n they are the values themselves, in any order.
TEST(Stats, OrderStatisticIntervalOfTheMedianHasTheBinomialRanks) {
  const std::map<size_t, std::pair<double, double>> ranks = {
      {6, {1, 6}}, {7, {1, 7}}, {10, {2, 9}}, {20, {6, 15}}, {100, {40, 61}}};
  for (const auto& [n, want] : ranks) {
    std::vector<double> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<double>((i * 13 + 3) % n + 1);
    const Interval ci = order_statistic_median_ci(x);
    EXPECT_EQ(ci.low, want.first) << n;
    EXPECT_EQ(ci.high, want.second) << n;
  }
  EXPECT_THROW(order_statistic_median_ci({1, 2, 3, 4, 5}), Error);  // 2 / 32 > 5%
  EXPECT_THROW(order_statistic_median_ci({1, 2, 3, 4, 5, 6, 7}, 1.0), Error);
  // A million samples (the normal limit: n/2 -+ 1.96 sqrt(n) / 2 = 500000 -+ 980) in the
  // binomial's own sum, no term lost to underflow.
  std::vector<double> many(1000000);
  for (size_t i = 0; i < many.size(); ++i) many[i] = static_cast<double>(many.size() - i);
  const Interval wide = order_statistic_median_ci(many);
  EXPECT_NEAR(wide.low, 500000 - 980, 2);
  EXPECT_NEAR(wide.high, 500001 + 980, 2);
  EXPECT_EQ(wide.low + wide.high, 1000001);  // symmetric ranks
  // Coverage on skewed samples (exponential, median ln 2), where the percentile bootstrap of 7
  // covered 86%: at least 95% (98.4% in theory: 1 - 2 / 2^7).
  Rng rng(11);
  int covered = 0;
  const int trials = 4000;
  for (int t = 0; t < trials; ++t) {
    std::vector<double> x(7);
    for (double& v : x) v = -std::log(1 - rng.uniform());
    const Interval ci = order_statistic_median_ci(x);
    covered += ci.low <= std::log(2.0) && std::log(2.0) <= ci.high;
  }
  EXPECT_GE(covered, 0.965 * trials);
  EXPECT_LE(covered, 0.995 * trials);
}

// The range of n independent units covers the median with probability 1 - 2^(1-n), and a
// bootstrap never leaves it: below 6 units (75% at 3, 94% at 5) no 95% interval is written.
TEST(Stats, TheMediansIntervalNeedsSixResampledUnits) {
  const std::vector<double> five = {2, 4, 5, 7, 9}, six = {2, 4, 5, 7, 9, 3};
  EXPECT_FALSE(summarize(five).has_median_ci);
  EXPECT_TRUE(to_json(summarize(five)).at("median_ci95").is_null());
  const Summary s = summarize(six);
  EXPECT_TRUE(s.has_median_ci);
  EXPECT_EQ(to_json(s).at("median_ci95").size(), 2u);
  EXPECT_LT(s.median_ci95.low, s.median_ci95.high);
  // Independent samples: the order statistics (here all six), not a bootstrap.
  EXPECT_EQ(s.median_ci95.low, 2);
  EXPECT_EQ(s.median_ci95.high, 9);
  // Units are blocks when samples come in correlated runs: 12 samples in runs of 2 are 6.
  std::vector<double> twelve = six;
  twelve.insert(twelve.end(), five.begin(), five.end());
  twelve.push_back(6);
  EXPECT_TRUE(to_json(summarize(twelve, 1, 2)).at("median_ci95").is_array());
  EXPECT_TRUE(to_json(summarize(twelve, 1, 3)).at("median_ci95").is_null());
}
}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

TEST(Stats, KolmogorovSmirnovAndWassersteinByHand) {
  // F_x - F_y = 1/3 on [1, 4): D = 1/3; a shift by one moves all mass by 1: W1 = 1.
  const std::vector<double> x = {1, 2, 3}, y = {2, 3, 4};
  EXPECT_NEAR(ks_two_sample(x, y).statistic, 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(wasserstein_1(x, y), 1.0, 1e-12);
  EXPECT_NEAR(wasserstein_1(y, x), 1.0, 1e-12);
  // Unequal sizes: {0, 10} vs {5}: F differs by 1/2 on [0, 10): W1 = 1/2 * 5 + 1/2 * 5 = 5.
  EXPECT_NEAR(wasserstein_1({0, 10}, {5}), 5.0, 1e-12);
  EXPECT_NEAR(ks_two_sample({0, 10}, {5}).statistic, 0.5, 1e-12);
  // Identical samples: D = 0, p = 1, W1 = 0.
  EXPECT_EQ(ks_two_sample(x, x).statistic, 0.0);
  EXPECT_EQ(ks_two_sample(x, x).p_value, 1.0);
  EXPECT_EQ(wasserstein_1(x, x), 0.0);
}

TEST(Stats, KolmogorovSmirnovPValueOfDisjointSamples) {
  // n = m = 10, D = 1: ne = sqrt(5), lambda = (sqrt(5) + 0.12 + 0.11 / sqrt(5)) = 2.4053,
  // p = 2 (e^{-2 lambda^2} - e^{-8 lambda^2} + ...) = 1.89e-5.
  std::vector<double> a, b;
  for (int i = 0; i < 10; ++i) a.push_back(i), b.push_back(100 + i);
  const KsResult r = ks_two_sample(a, b);
  EXPECT_EQ(r.statistic, 1.0);
  const double lambda = std::sqrt(5.0) + 0.12 + 0.11 / std::sqrt(5.0);
  EXPECT_NEAR(r.p_value, 2 * std::exp(-2 * lambda * lambda), 1e-9);
  EXPECT_NEAR(r.p_value, 1.89e-5, 0.01e-5);
  EXPECT_THROW(ks_two_sample({}, a), Error);
}
}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

// Wilson's score interval against scipy 1.10's binomtest(k, n).proportion_ci(method="wilson").
TEST(Stats, WilsonIntervalMatchesScipy) {
  struct Case {
    int64_t k, n;
    double low, high;
  };
  for (const Case& c :
       {Case{0, 10, 0.0, 0.27753279986288926}, Case{5, 10, 0.236593090512564, 0.7634069094874361},
        Case{10, 10, 0.7224672001371109, 1.0}, Case{3, 7, 0.1582198552514697, 0.7495416354723428},
        Case{29, 30, 0.8332960900859083, 0.9940914096183875}}) {
    const Interval i = wilson_interval(c.k, c.n);
    EXPECT_NEAR(i.low, c.low, 1e-12) << c.k << "/" << c.n;
    EXPECT_NEAR(i.high, c.high, 1e-12) << c.k << "/" << c.n;
  }
  EXPECT_THROW(wilson_interval(1, 0), Error);
  EXPECT_THROW(wilson_interval(3, 2), Error);
}

TEST(Stats, McNemarExactByHand) {
  EXPECT_EQ(mcnemar_exact_p(0, 0), 1.0);
  EXPECT_NEAR(mcnemar_exact_p(0, 5), 2.0 / 32, 1e-12);               // 2 * 0.5^5
  EXPECT_NEAR(mcnemar_exact_p(9, 1), 2.0 * (1 + 10) / 1024, 1e-12);  // symmetric in b, c
  EXPECT_EQ(mcnemar_exact_p(4, 4), 1.0);
}

TEST(Stats, BootstrapMeanInterval) {
  const Interval constant = bootstrap_mean_ci({0.5, 0.5, 0.5});
  EXPECT_EQ(constant.low, 0.5);
  EXPECT_EQ(constant.high, 0.5);
  const std::vector<double> x = {0, 1, 0, 1, 1, 0, 1, 1};
  const Interval a = bootstrap_mean_ci(x, 0.95, 2000, 3), b = bootstrap_mean_ci(x, 0.95, 2000, 3);
  EXPECT_EQ(a.low, b.low);  // seeded
  EXPECT_LT(a.low, mean(x));
  EXPECT_GT(a.high, mean(x));
  EXPECT_GE(a.low, 0.0);
  EXPECT_LE(a.high, 1.0);
}
TEST(Stats, PairedBootstrapDrawsPairs) {
  // y = x + 1 pair by pair: every resample's mean difference is exactly 1, while drawing the
  // two series independently would spread it.
  const std::vector<double> x = {3, 9, 1, 7, 4, 12, 5}, y = {4, 10, 2, 8, 5, 13, 6};
  const Interval d = bootstrap_paired_ci(x.size(), [&](const std::vector<size_t>& draw) {
    double sum = 0;
    for (size_t i : draw) sum += y[i] - x[i];
    return sum / static_cast<double>(draw.size());
  });
  EXPECT_EQ(d.low, 1.0);
  EXPECT_EQ(d.high, 1.0);
  // The mean's interval is the paired bootstrap of one series, draw for draw.
  const Interval a = bootstrap_mean_ci(x, 0.9, 500, 7);
  const Interval b = bootstrap_paired_ci(
      x.size(),
      [&](const std::vector<size_t>& draw) {
        double sum = 0;
        for (size_t i : draw) sum += x[i];
        return sum / static_cast<double>(draw.size());
      },
      0.9, 500, 7);
  EXPECT_EQ(a.low, b.low);
  EXPECT_EQ(a.high, b.high);
  EXPECT_THROW(bootstrap_paired_ci(0, [](const std::vector<size_t>&) { return 0.0; }), Error);
}

TEST(Stats, WilcoxonSignedRankByHand) {
  // d = 1, -2, 4: ranks 1, 2, 3, W+ = 4, W- = 2; of the 8 sign patterns, 3 give W+ <= 2.
  WilcoxonResult r = wilcoxon_signed_rank({10, 20, 30}, {11, 18, 34});
  EXPECT_EQ(r.statistic, 2.0);
  EXPECT_EQ(r.nonzero, 3);
  EXPECT_TRUE(r.exact);
  EXPECT_NEAR(r.p_value, 2 * 3.0 / 8, 1e-15);
  // Zero differences are dropped: the same test on the three pairs that differ.
  r = wilcoxon_signed_rank({10, 5, 20, 7, 30}, {11, 5, 18, 7, 34});
  EXPECT_EQ(r.nonzero, 3);
  EXPECT_NEAR(r.p_value, 0.75, 1e-15);
  // d = 1, 1, 1, -1: tied ranks 2.5, W- = 2.5. Exact over the 16 sign patterns: W+ = 2.5 k
  // for k plus signs, P[k <= 1] = 5/16, p = 10/16 (the normal approximation would say 0.317).
  r = wilcoxon_signed_rank({1, 1, 1, 1}, {2, 2, 2, 0});
  EXPECT_TRUE(r.exact);
  EXPECT_EQ(r.statistic, 2.5);
  EXPECT_NEAR(r.p_value, 10.0 / 16, 1e-15);
  // 51 pairs all +1: past 50, the approximation. Mean 51*52/4 = 663, variance
  // (51*52*103 - (51^3 - 51)/2) / 24 = 8619, W- = 0.
  r = wilcoxon_signed_rank(std::vector<double>(51, 1.0), std::vector<double>(51, 2.0));
  EXPECT_FALSE(r.exact);
  EXPECT_EQ(r.statistic, 0.0);
  EXPECT_NEAR(r.p_value, std::erfc(663 / std::sqrt(8619.0) / std::sqrt(2.0)), 1e-25);
  // Nothing differs: no evidence of a shift.
  r = wilcoxon_signed_rank({4, 8}, {4, 8});
  EXPECT_EQ(r.nonzero, 0);
  EXPECT_EQ(r.p_value, 1.0);
  EXPECT_THROW(wilcoxon_signed_rank({1, 2}, {1}), Error);
}

TEST(Stats, WilcoxonSignedRankMatchesScipy) {
  std::ifstream in(std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/stats/wilcoxon.json");
  ASSERT_TRUE(in) << "tests/fixtures/stats/wilcoxon.json";
  const nlohmann::json fixture = nlohmann::json::parse(in);
  int exact = 0, approximate = 0;
  for (const auto& c : fixture["cases"]) {
    const auto x = c["x"].get<std::vector<double>>(), y = c["y"].get<std::vector<double>>();
    const WilcoxonResult r = wilcoxon_signed_rank(x, y);
    SCOPED_TRACE(c.dump());
    EXPECT_EQ(r.exact, c["exact"].get<bool>());
    EXPECT_NEAR(r.statistic, c["statistic"].get<double>(), 1e-9);
    // Both sides compute the same formula in doubles: rounding apart, no more.
    EXPECT_NEAR(r.p_value, c["p_value"].get<double>(), 1e-12 + 1e-10 * c["p_value"].get<double>());
    (r.exact ? exact : approximate) += 1;
  }
  EXPECT_GE(exact, 10);  // both branches are exercised
  EXPECT_GE(approximate, 10);
}

}  // namespace
}  // namespace kvbench
