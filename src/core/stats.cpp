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

namespace {

void check_block(const std::vector<double>& x, size_t block, bool moving = false) {
  KVB_CHECK(block >= 1 && (moving || x.size() % block == 0), "bootstrap: runs of ", block,
            " samples do not divide ", x.size(), " samples");
}

// SampleRun::moving's draw: blocks of `block` consecutive samples from uniform starts, wrapping
// at the end, until x's size is filled.
void resample_moving(const std::vector<double>& x, size_t block, Rng& rng,
                     std::vector<double>& draw) {
  const size_t n = x.size();
  for (size_t filled = 0; filled < n;) {
    const size_t from = rng.below(n);
    for (size_t k = 0; k < block && filled < n; ++k) draw[filled++] = x[(from + k) % n];
  }
}

// One bootstrap resample of x into draw (x's size): whole runs of `block` samples drawn with
// replacement (single samples when block is 1, the same draws as before blocks existed).
void resample(const std::vector<double>& x, size_t block, Rng& rng, std::vector<double>& draw) {
  const size_t runs = x.size() / block;
  for (size_t r = 0; r < runs; ++r) {
    const size_t from = rng.below(runs) * block;
    std::copy_n(x.begin() + static_cast<std::ptrdiff_t>(from), block,
                draw.begin() + static_cast<std::ptrdiff_t>(r * block));
  }
}

}  // namespace

size_t moving_block_length(size_t n) {
  return std::max<size_t>(1, static_cast<size_t>(std::lround(std::cbrt(static_cast<double>(n)))));
}

Interval bootstrap_median_ci(const std::vector<double>& x, double confidence, int resamples,
                             uint64_t seed, size_t block) {
  KVB_CHECK(!x.empty(), "bootstrap of an empty sample");
  KVB_CHECK(confidence > 0 && confidence < 1, "confidence must be in (0, 1)");
  KVB_CHECK(resamples > 0, "resamples must be positive");
  check_block(x, block);
  Rng rng(seed);
  std::vector<double> medians(static_cast<size_t>(resamples));
  std::vector<double> draw(x.size());
  for (auto& m : medians) {
    resample(x, block, rng, draw);
    m = median(draw);
  }
  const double tail = (1 - confidence) / 2 * 100;
  return {percentile(medians, tail), percentile(medians, 100 - tail)};
}

namespace {

// median() of v, reordering v: O(n) selection instead of a sort, as the bootstrap of long
// sample lists (ITL) takes thousands of medians.
double median_in_place(std::vector<double>& v) {
  const size_t k = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  if (v.size() % 2) return v[k];
  const double lo = *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k));
  return lo + 0.5 * (v[k] - lo);  // percentile()'s interpolation at rank k - 0.5
}

}  // namespace

Interval bootstrap_median_change_ci(const std::vector<double>& baseline,
                                    const std::vector<double>& candidate, double confidence,
                                    int resamples, uint64_t seed, size_t baseline_block,
                                    size_t candidate_block) {
  return bootstrap_median_change_ci_runs(
      {{baseline, baseline_block}}, {{candidate, candidate_block}}, confidence, resamples, seed);
}

namespace {

void check_runs(const std::vector<SampleRun>& runs, bool positive) {
  KVB_CHECK(!runs.empty(), "bootstrap of an empty sample");
  for (const SampleRun& r : runs) {
    KVB_CHECK(!r.samples.empty(), "bootstrap of an empty sample");
    KVB_CHECK(!positive || *std::min_element(r.samples.begin(), r.samples.end()) > 0,
              "a relative change needs positive baseline samples");
    check_block(r.samples, r.block, r.moving);
  }
}

// One round's draw of a side into `draw`: its runs drawn with replacement (kept as they are when
// there is one, drawing nothing from rng), each drawn run's blocks resampled by resample().
void resample_runs(const std::vector<SampleRun>& runs, Rng& rng, std::vector<double>& draw,
                   std::vector<double>& scratch) {
  const auto draw_run = [&rng](const SampleRun& r, std::vector<double>& out) {
    out.resize(r.samples.size());
    if (r.moving)
      resample_moving(r.samples, r.block, rng, out);
    else
      resample(r.samples, r.block, rng, out);
  };
  if (runs.size() == 1) {
    draw_run(runs[0], draw);
    return;
  }
  draw.clear();
  for (size_t i = 0; i < runs.size(); ++i) {
    const SampleRun& r = runs[rng.below(runs.size())];
    draw_run(r, scratch);
    draw.insert(draw.end(), scratch.begin(), scratch.end());
  }
}

}  // namespace

Interval bootstrap_median_change_ci_runs(const std::vector<SampleRun>& baseline,
                                         const std::vector<SampleRun>& candidate, double confidence,
                                         int resamples, uint64_t seed) {
  check_runs(baseline, true);
  check_runs(candidate, false);
  KVB_CHECK(confidence > 0 && confidence < 1, "confidence must be in (0, 1)");
  KVB_CHECK(resamples > 0, "resamples must be positive");
  Rng rng(seed);
  std::vector<double> changes(static_cast<size_t>(resamples));
  std::vector<double> draw_b, draw_c, scratch;
  for (auto& d : changes) {
    resample_runs(baseline, rng, draw_b, scratch);
    resample_runs(candidate, rng, draw_c, scratch);
    d = median_in_place(draw_c) / median_in_place(draw_b) - 1;
  }
  const double tail = (1 - confidence) / 2 * 100;
  return {percentile(changes, tail), percentile(changes, 100 - tail)};
}

namespace {

// Both empirical CDFs evaluated just after every distinct point of the pooled sample, with
// the gaps between consecutive points: what the KS and Wasserstein distances integrate.
template <class Fn>
void walk_cdfs(std::vector<double> x, std::vector<double> y, Fn&& fn) {
  KVB_CHECK(!x.empty() && !y.empty(), "distribution distance of an empty sample");
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  std::vector<double> points(x);
  points.insert(points.end(), y.begin(), y.end());
  std::sort(points.begin(), points.end());
  points.erase(std::unique(points.begin(), points.end()), points.end());
  size_t i = 0, j = 0;
  for (size_t k = 0; k < points.size(); ++k) {
    while (i < x.size() && x[i] <= points[k]) ++i;
    while (j < y.size() && y[j] <= points[k]) ++j;
    const double fx = static_cast<double>(i) / static_cast<double>(x.size());
    const double fy = static_cast<double>(j) / static_cast<double>(y.size());
    const double gap = k + 1 < points.size() ? points[k + 1] - points[k] : 0.0;
    fn(fx, fy, gap);
  }
}

// Q_KS(lambda) = 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lambda^2), 1 for small lambda.
double kolmogorov_q(double lambda) {
  if (lambda < 0.2) return 1.0;
  double sum = 0, sign = 1;
  for (int j = 1; j <= 100; ++j) {
    const double term = sign * std::exp(-2.0 * j * j * lambda * lambda);
    sum += term;
    if (std::fabs(term) < 1e-12 * std::fabs(sum)) break;
    sign = -sign;
  }
  return std::clamp(2.0 * sum, 0.0, 1.0);
}

}  // namespace

Interval bootstrap_paired_ci(size_t n,
                             const std::function<double(const std::vector<size_t>&)>& statistic,
                             double confidence, int resamples, uint64_t seed) {
  KVB_CHECK(n > 0, "bootstrap of an empty sample");
  KVB_CHECK(confidence > 0 && confidence < 1, "confidence must be in (0, 1)");
  KVB_CHECK(resamples > 0, "bootstrap: resamples must be > 0, got ", resamples);
  Rng rng(seed);
  std::vector<size_t> draw(n);
  std::vector<double> stats(static_cast<size_t>(resamples));
  for (auto& s : stats) {
    for (auto& i : draw) i = rng.below(n);
    s = statistic(draw);
  }
  return {percentile(stats, 50 * (1 - confidence)), percentile(stats, 50 * (1 + confidence))};
}

Interval bootstrap_mean_ci(const std::vector<double>& x, double confidence, int resamples,
                           uint64_t seed) {
  return bootstrap_paired_ci(
      x.size(),
      [&](const std::vector<size_t>& draw) {
        double sum = 0;
        for (size_t i : draw) sum += x[i];
        return sum / static_cast<double>(draw.size());
      },
      confidence, resamples, seed);
}

namespace {

// Ranks 1..n of v (ties at their mean rank) and the tie term sum(t^3 - t) over tie groups.
std::vector<double> mean_ranks(const std::vector<double>& v, double& tie_term) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  tie_term = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && v[order[j]] == v[order[i]]) ++j;
    const double t = static_cast<double>(j - i);
    for (size_t k = i; k < j; ++k) rank[order[k]] = (static_cast<double>(i + j) + 1) / 2;
    tie_term += t * t * t - t;
    i = j;
  }
  return rank;
}

// P[W+ <= w] under the null (each sign + or - with probability 1/2, independently) for the
// given ranks, all as doubled ranks so tied mean ranks are integers too: counts of the subsets
// of the ranks by their sum (at most 2^50 for 50 ranks, exact in a double).
double signed_rank_cdf(const std::vector<int64_t>& doubled_ranks, int64_t doubled_w) {
  int64_t total = 0;
  for (int64_t r : doubled_ranks) total += r;
  std::vector<double> count(static_cast<size_t>(total + 1), 0.0);
  count[0] = 1;
  int64_t reach = 0;
  for (int64_t r : doubled_ranks) {
    reach += r;
    for (int64_t s = reach; s >= r; --s) count[s] += count[s - r];
  }
  double below = 0;
  for (int64_t s = 0; s <= std::min(doubled_w, total); ++s) below += count[s];
  return below / std::ldexp(1.0, static_cast<int>(doubled_ranks.size()));
}

}  // namespace

WilcoxonResult wilcoxon_signed_rank(const std::vector<double>& x, const std::vector<double>& y) {
  KVB_CHECK(x.size() == y.size(), "wilcoxon_signed_rank: ", x.size(), " and ", y.size(),
            " samples do not pair up");
  std::vector<double> d;
  for (size_t i = 0; i < x.size(); ++i)
    if (y[i] != x[i]) d.push_back(y[i] - x[i]);
  WilcoxonResult r;
  r.nonzero = static_cast<int64_t>(d.size());
  if (d.empty()) return r;
  std::vector<double> magnitude(d.size());
  std::transform(d.begin(), d.end(), magnitude.begin(), [](double v) { return std::fabs(v); });
  double tie_term = 0;
  const std::vector<double> rank = mean_ranks(magnitude, tie_term);
  double plus = 0, minus = 0;
  for (size_t i = 0; i < d.size(); ++i) (d[i] > 0 ? plus : minus) += rank[i];
  const double n = static_cast<double>(d.size());
  r.statistic = std::min(plus, minus);
  r.exact = r.nonzero <= 50;
  if (r.exact) {
    // Mean ranks are whole or half numbers: doubled, integers. Flipping every sign maps W+ to
    // W-, so the null is symmetric and P[W <= min] is the smaller tail.
    std::vector<int64_t> doubled(rank.size());
    std::transform(rank.begin(), rank.end(), doubled.begin(),
                   [](double v) { return std::llround(2 * v); });
    r.p_value = std::min(1.0, 2 * signed_rank_cdf(doubled, std::llround(2 * r.statistic)));
    return r;
  }
  const double mean_w = n * (n + 1) / 4;
  const double sd = std::sqrt((n * (n + 1) * (2 * n + 1) - tie_term / 2) / 24);
  r.p_value = std::erfc(std::fabs(r.statistic - mean_w) / sd / std::sqrt(2.0));
  return r;
}

double mcnemar_exact_p(int64_t b, int64_t c) {
  KVB_CHECK(b >= 0 && c >= 0, "mcnemar_exact_p: negative counts");
  const int64_t n = b + c, k = std::min(b, c);
  if (n == 0) return 1.0;
  // P[X <= k] for X ~ Binomial(n, 1/2), in log space so large n does not overflow.
  double tail = 0;
  for (int64_t i = 0; i <= k; ++i) {
    tail += std::exp(std::lgamma(n + 1.0) - std::lgamma(i + 1.0) - std::lgamma(n - i + 1.0) -
                     n * std::log(2.0));
  }
  return std::min(1.0, 2 * tail);
}

Interval wilson_interval(int64_t passed, int64_t n) {
  KVB_CHECK(n > 0 && passed >= 0 && passed <= n, "wilson_interval: needs 0 <= passed <= n, n > 0");
  const double z = 1.959963984540054, nn = static_cast<double>(n);
  const double p = static_cast<double>(passed) / nn, z2 = z * z;
  const double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / (1 + z2 / nn);
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

KsResult ks_two_sample(const std::vector<double>& x, const std::vector<double>& y) {
  KsResult r;
  walk_cdfs(x, y, [&](double fx, double fy, double) {
    r.statistic = std::max(r.statistic, std::fabs(fx - fy));
  });
  const double n = static_cast<double>(x.size()), m = static_cast<double>(y.size());
  const double ne = std::sqrt(n * m / (n + m));
  r.p_value = kolmogorov_q((ne + 0.12 + 0.11 / ne) * r.statistic);
  return r;
}

double wasserstein_1(const std::vector<double>& x, const std::vector<double>& y) {
  double w = 0;
  walk_cdfs(x, y, [&](double fx, double fy, double gap) { w += std::fabs(fx - fy) * gap; });
  return w;
}

Interval order_statistic_median_ci(std::vector<double> x, double confidence) {
  KVB_CHECK(confidence > 0 && confidence < 1, "order-statistic interval: confidence ", confidence,
            " is not in (0, 1)");
  const size_t n = x.size();
  const double tail = (1 - confidence) / 2;
  // j = how many order statistics each end may leave out: P[Binomial(n, 1/2) <= j - 1] <= tail.
  // log P[= k] by the recurrence P[= k + 1] = P[= k] (n - k) / (k + 1) from 2^-n (no lgamma:
  // glibc's writes a global; in logs, 10^6 samples' first terms do not underflow the sum).
  size_t j = 0;
  double cdf = 0, log_pmf = -static_cast<double>(n) * std::log(2.0);
  while (j < n) {
    const double pmf = std::exp(log_pmf);
    if (cdf + pmf > tail) break;
    cdf += pmf;
    log_pmf += std::log(static_cast<double>(n - j) / static_cast<double>(j + 1));
    ++j;
  }
  KVB_CHECK(j >= 1, "order-statistic interval of the median: ", n, " samples cannot give a ",
            confidence, " interval");
  std::sort(x.begin(), x.end());
  return {x[j - 1], x[n - j]};
}

Summary summarize(const std::vector<double>& x, uint64_t seed, size_t block) {
  KVB_CHECK(!x.empty(), "summary of an empty sample");
  Summary s;
  s.n = x.size();
  s.units = x.size() / std::max<size_t>(block, 1);
  s.mean = mean(x);
  s.stddev = stddev(x);
  s.min = *std::min_element(x.begin(), x.end());
  s.max = *std::max_element(x.begin(), x.end());
  s.median = median(x);
  s.p90 = percentile(x, 90);
  s.p99 = percentile(x, 99);
  check_block(x, block);
  s.has_median_ci = s.units >= kMinUnitsForMedianCi;
  s.median_ci95 = !s.has_median_ci ? Interval{s.median, s.median}
                  : block <= 1     ? order_statistic_median_ci(x, 0.95)
                                   : bootstrap_median_ci(x, 0.95, 2000, seed, block);
  return s;
}

nlohmann::json to_json(const Summary& s) {
  return {{"n", s.n},
          {"mean", s.mean},
          {"stddev", s.stddev},
          {"min", s.min},
          {"max", s.max},
          {"median", s.median},
          {"p50", s.median},
          {"p90", s.p90},
          {"p99", s.p99},
          {"median_ci95", s.has_median_ci ? nlohmann::json{s.median_ci95.low, s.median_ci95.high}
                                          : nlohmann::json()}};
}

}  // namespace kvbench
