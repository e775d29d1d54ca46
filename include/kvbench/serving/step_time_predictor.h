// The throughput predictor of the `predictor` suite (seed paper, tool 1, done on measured data):
// a method's decode step time t(batch, context) profiled on a grid of batch x context and
// interpolated. Two models, both fitted from the same grid:
//
//  - BilinearStepModel: piecewise bilinear interpolation of the grid's measured medians (and
//    linear extrapolation from the edge cells outside it). Exact at the grid, and exact
//    everywhere on any function a + b*B + c*C + d*B*C, which is the cost model of a decode step
//    (weights read once per step: a; per-sequence matmuls: b*B; attention over every held
//    token: d*B*C). Piecewise, so it also follows a change of slope at a grid node (a retention
//    budget that caps the held tokens) that no single global formula of that form can.
//  - LeastSquaresStepModel: the same four terms fitted by least squares over the whole grid:
//    smooths measurement noise across every point, but misses slope changes inside the range.
//
// Accuracy of a prediction, as the seed paper reports it: 1 - |pred - true| / true.
// Pure arithmetic, no model: the suite measures, these fit and predict.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

struct StepSample {
  double batch = 0;
  double context = 0;
  double seconds = 0;
};

class StepTimeModel {
 public:
  virtual ~StepTimeModel() = default;
  virtual std::string name() const = 0;
  // Predicted seconds of one step of `batch` sequences holding `context` tokens each.
  virtual double predict(double batch, double context) const = 0;
  virtual nlohmann::json to_json() const = 0;
};

class BilinearStepModel final : public StepTimeModel {
 public:
  // `samples` must hold exactly one sample per (batch, context) of a full grid: the distinct
  // batches times the distinct contexts. Throws Error naming the first missing or repeated
  // point, or a non-finite or negative time.
  explicit BilinearStepModel(const std::vector<StepSample>& samples);
  std::string name() const override { return "bilinear"; }
  double predict(double batch, double context) const override;
  nlohmann::json to_json() const override;
  const std::vector<double>& batches() const { return batches_; }
  const std::vector<double>& contexts() const { return contexts_; }

 private:
  std::vector<double> batches_, contexts_;  // ascending
  std::vector<double> values_;              // [batch index * contexts + context index]
};

// Least-squares solution of X w = y (X: rows of `cols` features) by Householder QR in double
// with columns scaled to unit norm. Throws Error when X has fewer rows than columns or is rank
// deficient (a column within 1e-10 of the span of the others). Exposed for tests.
std::vector<double> least_squares(const std::vector<std::vector<double>>& x,
                                  const std::vector<double>& y);

class LeastSquaresStepModel final : public StepTimeModel {
 public:
  // t = a + b*B + c*C + d*B*C fitted to `samples` (at least two distinct batches and two
  // distinct contexts). Throws Error otherwise.
  explicit LeastSquaresStepModel(const std::vector<StepSample>& samples);
  std::string name() const override { return "least_squares"; }
  double predict(double batch, double context) const override;
  nlohmann::json to_json() const override;
  const std::vector<double>& coefficients() const { return w_; }

 private:
  std::vector<double> w_;  // a, b, c, d
};

// 1 - |predicted - measured| / measured; throws Error unless measured > 0.
double prediction_accuracy(double predicted, double measured);

// Integer points strictly between neighbouring grid values (the rounded geometric mean of each
// pair, skipped when no integer lies strictly between): held-out coordinates inside the grid's
// range and on none of its lines. `grid` ascending, distinct.
std::vector<int64_t> midpoints_between(const std::vector<int64_t>& grid);

}  // namespace kvbench
