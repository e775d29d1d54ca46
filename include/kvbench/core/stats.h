// Descriptive statistics for timing samples: every suite keeps raw samples and summarises
// them with these functions, so all reports use one definition of "median" and "p99".
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

double mean(const std::vector<double>& x);
// Sample standard deviation (divides by n - 1); 0 for fewer than two samples.
double stddev(const std::vector<double>& x);
// Percentile p in [0, 100] with linear interpolation between closest ranks
// (rank = p/100 * (n - 1), NumPy's default), so percentile(x, 50) is the usual median.
double percentile(std::vector<double> x, double p);
double median(const std::vector<double>& x);

struct Interval {
  double low = 0;
  double high = 0;
};

// Percentile-bootstrap confidence interval of the median: `resamples` resamples with
// replacement drawn from a seeded Rng, interval = the (1-c)/2 and (1+c)/2 percentiles.
// `block` > 1: x is consecutive runs of `block` correlated samples (one request's inter-token
// gaps), and whole runs are drawn (a block bootstrap), so the interval reflects the spread
// between runs, not the count of samples within them; block must divide x's size.
Interval bootstrap_median_ci(const std::vector<double>& x, double confidence = 0.95,
                             int resamples = 2000, uint64_t seed = 0, size_t block = 1);

// Percentile-bootstrap confidence interval of the relative change of medians,
// median(candidate) / median(baseline) - 1: each of `resamples` rounds draws a resample of
// `baseline` and then one of `candidate` (with replacement, one seeded Rng for both) and keeps
// the ratio of their medians minus one; the interval is the (1-c)/2 and (1+c)/2 percentiles of
// those. A ratio, not a difference over the observed baseline median, so a time's interval
// never reaches below -100%. Used by `kvbench compare` to call a timing regression only when
// the whole interval lies beyond the threshold. Baseline samples must be positive. Blocks as
// in bootstrap_median_ci, one size per side.
Interval bootstrap_median_change_ci(const std::vector<double>& baseline,
                                    const std::vector<double>& candidate, double confidence = 0.95,
                                    int resamples = 2000, uint64_t seed = 0,
                                    size_t baseline_block = 1, size_t candidate_block = 1);

// One run's timing samples (one process of a repeated benchmark), with the size of its
// correlated blocks as in bootstrap_median_ci.
struct SampleRun {
  std::vector<double> samples;
  size_t block = 1;
  // A series whose neighbours are coupled without fixed boundaries (served requests, in arrival
  // order: one's queueing delays the next): a circular moving-block bootstrap, each block
  // `block` consecutive samples from a uniform start, wrapping at the end, the last one cut
  // to the run's size. `block` need not divide it.
  bool moving = false;
};
// The moving block length of n coupled samples: round(n^(1/3)), the order of the optimal block
// length of a block bootstrap of a smooth statistic (Hall, Horowitz & Jing 1995).
size_t moving_block_length(size_t n);

// bootstrap_median_change_ci over several runs per side (separate processes of one config): each
// round draws, per side, as many runs as the side has with replacement, then within each drawn
// run its blocks with replacement, and takes the median of the pooled draw. Runs of one binary
// can differ by far more than the noise within a run (the machine's speed shifts over seconds:
// the 2-core CI machine moves between two levels 1.45x apart, docs/report-and-compare.md),
// which one run per side cannot show; drawing runs puts that spread in the interval. A side
// with one run skips the first stage, so one run per side gives exactly
// bootstrap_median_change_ci's interval.
Interval bootstrap_median_change_ci_runs(const std::vector<SampleRun>& baseline,
                                         const std::vector<SampleRun>& candidate,
                                         double confidence = 0.95, int resamples = 2000,
                                         uint64_t seed = 0);

// Distribution-free confidence interval of the median of independent samples: the order
// statistics [x_(j), x_(n+1-j)] (1-based) for the largest j with P[Binomial(n, 1/2) <= j - 1]
// <= (1 - c)/2, which cover the true median with probability at least c for any continuous
// distribution. Needs n >= 6 at c = 0.95 (throws below the n where j would be 0).
Interval order_statistic_median_ci(std::vector<double> x, double confidence = 0.95);

// The fewest resampled units (samples, or runs of `block`) from which summarize() gives the
// median a 95% interval. A percentile bootstrap of the median never leaves the range of its
// units, and [min, max] of n independent units covers the true median with probability
// 1 - 2^(1-n): 75% at 3, 88% at 4, 94% at 5, 97% at 6. Below 6 no interval read from the data
// alone is a 95% one, so none is written (throughput's 3 repeats used to get [min, max] labelled
// 95%, which covered 3 times in 4). From 6 on the percentile bootstrap still runs short, as it
// does for medians of few samples (600 exponential samples of each size n: 93.5% at 6, 86% at
// 7, 92-95% at 8-30), so independent samples (block 1) get order_statistic_median_ci instead,
// and only runs of correlated samples the block bootstrap.
constexpr size_t kMinUnitsForMedianCi = 6;

struct Summary {
  size_t n = 0;
  // What the median's interval resampled: n / block runs. Below kMinUnitsForMedianCi there is
  // no interval (has_median_ci is false; to_json writes null).
  size_t units = 0;
  bool has_median_ci = false;
  double mean = 0, stddev = 0, min = 0, max = 0;
  double median = 0, p90 = 0, p99 = 0;
  Interval median_ci95;  // {median, median} when !has_median_ci
};

// Two-sample Kolmogorov-Smirnov test: D = sup_t |F_x(t) - F_y(t)| of the empirical CDFs and
// its asymptotic p-value (Kolmogorov distribution with Stephens' small-sample correction:
// lambda = (sqrt(ne) + 0.12 + 0.11 / sqrt(ne)) D, ne = n m / (n + m)). Throws on an empty sample.
struct KsResult {
  double statistic = 0;
  double p_value = 1;
};
KsResult ks_two_sample(const std::vector<double>& x, const std::vector<double>& y);
// First Wasserstein (earth mover's) distance between two empirical distributions:
// the integral of |F_x - F_y|. Throws on an empty sample.
double wasserstein_1(const std::vector<double>& x, const std::vector<double>& y);

// Percentile-bootstrap confidence interval of the mean, seeded like bootstrap_median_ci.
Interval bootstrap_mean_ci(const std::vector<double>& x, double confidence = 0.95,
                           int resamples = 2000, uint64_t seed = 0);
// Percentile-bootstrap confidence interval of a statistic of n paired observations: each round
// draws n indices with replacement (one seeded Rng) and evaluates `statistic` on them, so every
// series indexed by them is resampled pair by pair. bootstrap_mean_ci is this with the mean.
Interval bootstrap_paired_ci(size_t n,
                             const std::function<double(const std::vector<size_t>&)>& statistic,
                             double confidence = 0.95, int resamples = 2000, uint64_t seed = 0);

// Wilcoxon signed-rank test of paired samples, two-sided: d = y - x, zero differences dropped
// (Wilcoxon's convention), |d| ranked with ties at their mean rank, statistic = min(W+, W-)
// over the n nonzero pairs. For n <= 50 the p-value is exact: W+'s distribution over the 2^n
// sign patterns of these ranks, ties included (what a permutation test of the signs gives;
// the normal approximation is anti-conservative for few tied pairs, e.g. p = 0.157 against
// 0.5 for d = {1, 1}). Above, the normal approximation with the tie correction of the
// variance and no continuity correction. scipy 1.10's rule differs (exact only without zeros,
// and then for tied ranks too), so tests/fixtures/stats/wilcoxon.json asks scipy's exact test
// of the nonzero pairs, its exact permutation_test for tied ones, and its approximation above
// 50 (scripts/stats_fixtures.py). With no nonzero difference, p = 1. Throws when the samples
// do not pair up.
struct WilcoxonResult {
  double statistic = 0;
  double p_value = 1;
  int64_t nonzero = 0;  // pairs that differ, the n the test ranks
  bool exact = false;
};
WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y);
// Exact two-sided McNemar test of paired pass/fail outcomes: b pairs passed only by the first,
// c only by the second; p = min(1, 2 P[Binomial(b + c, 1/2) <= min(b, c)]), 1 when b + c = 0.
double mcnemar_exact_p(int64_t b, int64_t c);
// Wilson's score interval (95%, z = 1.959964) for a pass rate of `passed` of `n` > 0: within
// [0, 1] and never of zero width at 0 or n passes, unlike the normal approximation.
Interval wilson_interval(int64_t passed, int64_t n);

// All of the above; the median's interval from kMinUnitsForMedianCi units on: for block 1
// order_statistic_median_ci, for runs of `block` samples bootstrap_median_ci's block bootstrap.
// Throws Error on an empty sample.
Summary summarize(const std::vector<double>& x, uint64_t seed = 0, size_t block = 1);
nlohmann::json to_json(const Summary& s);

}  // namespace kvbench
