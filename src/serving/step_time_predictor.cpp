#include "kvbench/serving/step_time_predictor.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "kvbench/core/error.h"

namespace kvbench {

namespace {

// Index i of the cell [grid[i], grid[i+1]] used for x (clamped, so points outside the grid use
// the edge cell and are extrapolated linearly), and the position t of x in it (0 at grid[i]).
std::pair<size_t, double> locate(const std::vector<double>& grid, double x) {
  if (grid.size() == 1) return {0, 0.0};
  size_t i = static_cast<size_t>(std::upper_bound(grid.begin(), grid.end(), x) - grid.begin());
  i = std::min(std::max<size_t>(i, 1), grid.size() - 1) - 1;
  return {i, (x - grid[i]) / (grid[i + 1] - grid[i])};
}

}  // namespace

BilinearStepModel::BilinearStepModel(const std::vector<StepSample>& samples) {
  KVB_CHECK(!samples.empty(), "predictor: no step samples to fit");
  std::set<double> b, c;
  for (const StepSample& s : samples) {
    KVB_CHECK(std::isfinite(s.seconds) && s.seconds >= 0, "predictor: step time ", s.seconds,
              " at batch ", s.batch, ", context ", s.context, " is not a finite time");
    b.insert(s.batch);
    c.insert(s.context);
  }
  batches_.assign(b.begin(), b.end());
  contexts_.assign(c.begin(), c.end());
  std::map<std::pair<double, double>, double> at;
  for (const StepSample& s : samples) {
    KVB_CHECK(at.emplace(std::make_pair(s.batch, s.context), s.seconds).second,
              "predictor: two samples at batch ", s.batch, ", context ", s.context);
  }
  for (double bb : batches_) {
    for (double cc : contexts_) {
      auto it = at.find({bb, cc});
      KVB_CHECK(it != at.end(), "predictor: the grid has no sample at batch ", bb, ", context ", cc,
                " (bilinear interpolation needs every batch x context)");
      values_.push_back(it->second);
    }
  }
}

double BilinearStepModel::predict(double batch, double context) const {
  const auto [i, u] = locate(batches_, batch);
  const auto [j, v] = locate(contexts_, context);
  const size_t nc = contexts_.size();
  auto f = [&](size_t bi, size_t ci) {
    return values_[std::min(bi, batches_.size() - 1) * nc + std::min(ci, nc - 1)];
  };
  return (1 - u) * (1 - v) * f(i, j) + u * (1 - v) * f(i + 1, j) + (1 - u) * v * f(i, j + 1) +
         u * v * f(i + 1, j + 1);
}

nlohmann::json BilinearStepModel::to_json() const {
  std::vector<std::vector<double>> rows;
  for (size_t i = 0; i < batches_.size(); ++i) {
    rows.emplace_back(values_.begin() + static_cast<std::ptrdiff_t>(i * contexts_.size()),
                      values_.begin() + static_cast<std::ptrdiff_t>((i + 1) * contexts_.size()));
  }
  return {{"model", name()}, {"batch", batches_}, {"context", contexts_}, {"step_s", rows}};
}

std::vector<double> least_squares(const std::vector<std::vector<double>>& x,
                                  const std::vector<double>& y) {
  const size_t m = x.size();
  KVB_CHECK(m > 0 && y.size() == m, "least_squares: ", m, " rows but ", y.size(), " targets");
  const size_t n = x.front().size();
  KVB_CHECK(n > 0 && m >= n, "least_squares: ", m, " rows for ", n, " unknowns");
  // Column-major copy, each column scaled to unit norm (undone at the end).
  std::vector<std::vector<double>> a(n, std::vector<double>(m));
  std::vector<double> scale(n);
  for (size_t j = 0; j < n; ++j) {
    double norm = 0;
    for (size_t i = 0; i < m; ++i) {
      KVB_CHECK(x[i].size() == n, "least_squares: row ", i, " has ", x[i].size(), " features");
      a[j][i] = x[i][j];
      norm += x[i][j] * x[i][j];
    }
    norm = std::sqrt(norm);
    KVB_CHECK(norm > 0, "least_squares: feature ", j, " is zero in every row");
    scale[j] = norm;
    for (double& v : a[j]) v /= norm;
  }
  std::vector<double> b = y;
  // Householder QR: a becomes R above the diagonal, b becomes Q^T y.
  std::vector<double> diag(n);
  for (size_t k = 0; k < n; ++k) {
    double norm = 0;
    for (size_t i = k; i < m; ++i) norm += a[k][i] * a[k][i];
    norm = std::sqrt(norm);
    KVB_CHECK(norm > 1e-10, "least_squares: the features are linearly dependent (column ", k,
              "); give more distinct points");
    const double alpha = a[k][k] > 0 ? -norm : norm;
    std::vector<double> v(a[k].begin() + static_cast<std::ptrdiff_t>(k), a[k].end());
    v[0] -= alpha;
    double vv = 0;
    for (double e : v) vv += e * e;
    auto reflect = [&](std::vector<double>& col) {
      double dot = 0;
      for (size_t i = k; i < m; ++i) dot += v[i - k] * col[i];
      const double f = 2 * dot / vv;
      for (size_t i = k; i < m; ++i) col[i] -= f * v[i - k];
    };
    for (size_t j = k; j < n; ++j) reflect(a[j]);
    reflect(b);
    diag[k] = a[k][k];
  }
  std::vector<double> w(n);
  for (size_t k = n; k-- > 0;) {
    double s = b[k];
    for (size_t j = k + 1; j < n; ++j) s -= a[j][k] * w[j];
    w[k] = s / diag[k];
  }
  for (size_t j = 0; j < n; ++j) w[j] /= scale[j];
  return w;
}

LeastSquaresStepModel::LeastSquaresStepModel(const std::vector<StepSample>& samples) {
  std::set<double> b, c;
  std::vector<std::vector<double>> x;
  std::vector<double> y;
  for (const StepSample& s : samples) {
    KVB_CHECK(std::isfinite(s.seconds) && s.seconds >= 0, "predictor: step time ", s.seconds,
              " at batch ", s.batch, ", context ", s.context, " is not a finite time");
    b.insert(s.batch);
    c.insert(s.context);
    x.push_back({1.0, s.batch, s.context, s.batch * s.context});
    y.push_back(s.seconds);
  }
  KVB_CHECK(b.size() >= 2 && c.size() >= 2,
            "predictor: least squares needs at least two batches and two contexts");
  w_ = least_squares(x, y);
}

double LeastSquaresStepModel::predict(double batch, double context) const {
  return w_[0] + w_[1] * batch + w_[2] * context + w_[3] * batch * context;
}

nlohmann::json LeastSquaresStepModel::to_json() const {
  return {{"model", name()}, {"formula", "a + b*batch + c*context + d*batch*context"},
          {"a", w_[0]},      {"b", w_[1]},
          {"c", w_[2]},      {"d", w_[3]}};
}

double prediction_accuracy(double predicted, double measured) {
  KVB_CHECK(measured > 0, "prediction_accuracy: measured time ", measured, " is not positive");
  return 1.0 - std::abs(predicted - measured) / measured;
}

std::vector<int64_t> midpoints_between(const std::vector<int64_t>& grid) {
  std::vector<int64_t> out;
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    const int64_t lo = grid[i], hi = grid[i + 1];
    KVB_CHECK(lo < hi, "midpoints_between: grid not ascending at ", lo, ", ", hi);
    if (hi - lo < 2) continue;
    int64_t m = static_cast<int64_t>(
        std::llround(std::sqrt(static_cast<double>(std::max<int64_t>(lo, 1)) * hi)));
    m = std::min(std::max(m, lo + 1), hi - 1);
    out.push_back(m);
  }
  return out;
}

}  // namespace kvbench
