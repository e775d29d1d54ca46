#include "kvbench/core/stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kvbench/core/error.h"
#include "kvbench/core/rng.h"

namespace kvbench {

double mean(const std::vector<double>& x) {
  KVB_CHECK(!x.empty(), "mean of an empty sample");
  return std::accumulate(x.begin(), x.end(), 0.0) / static_cast<double>(x.size());
}

double stddev(const std::vector<double>& x) {
  if (x.size() < 2) return 0.0;
  const double m = mean(x);
  double ss = 0;
  for (double v : x) ss += (v - m) * (v - m);
  return std::sqrt(ss / static_cast<double>(x.size() - 1));
}

double percentile(std::vector<double> x, double p) {
  KVB_CHECK(!x.empty(), "percentile of an empty sample");
  KVB_CHECK(p >= 0 && p <= 100, "percentile: p must be in [0, 100], got ", p);
  std::sort(x.begin(), x.end());
  const double rank = p / 100.0 * static_cast<double>(x.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, x.size() - 1);
  return x[lo] + (rank - static_cast<double>(lo)) * (x[hi] - x[lo]);
}

double median(const std::vector<double>& x) { return percentile(x, 50); }

Interval bootstrap_median_ci(const std::vector<double>& x, double confidence, int resamples,
                             uint64_t seed) {
  KVB_CHECK(!x.empty(), "bootstrap of an empty sample");
  KVB_CHECK(confidence > 0 && confidence < 1, "confidence must be in (0, 1)");
  KVB_CHECK(resamples > 0, "resamples must be positive");
  Rng rng(seed);
  std::vector<double> medians(static_cast<size_t>(resamples));
  std::vector<double> draw(x.size());
  for (auto& m : medians) {
    for (auto& d : draw) d = x[rng.below(x.size())];
    m = median(draw);
  }
  const double tail = (1 - confidence) / 2 * 100;
  return {percentile(medians, tail), percentile(medians, 100 - tail)};
}

Summary summarize(const std::vector<double>& x, uint64_t seed) {
  KVB_CHECK(!x.empty(), "summary of an empty sample");
  Summary s;
  s.n = x.size();
  s.mean = mean(x);
  s.stddev = stddev(x);
  s.min = *std::min_element(x.begin(), x.end());
  s.max = *std::max_element(x.begin(), x.end());
  s.median = median(x);
  s.p90 = percentile(x, 90);
  s.p99 = percentile(x, 99);
  s.median_ci95 = bootstrap_median_ci(x, 0.95, 2000, seed);
  return s;
}

nlohmann::json to_json(const Summary& s) {
  return {{"n", s.n},           {"mean", s.mean},
          {"stddev", s.stddev}, {"min", s.min},
          {"max", s.max},       {"median", s.median},
          {"p50", s.median},    {"p90", s.p90},
          {"p99", s.p99},       {"median_ci95", {s.median_ci95.low, s.median_ci95.high}}};
}

}  // namespace kvbench
