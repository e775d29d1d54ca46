#include "kvbench/engine/sampler.h"

#include <cmath>

#include "kvbench/core/error.h"

namespace kvbench {

at::Tensor greedy_ids(const at::Tensor& logits) {
  const at::Tensor ids = logits.argmax(-1);
  const at::Tensor top = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1);
  return at::where(at::isfinite(top), ids, at::Scalar(int64_t{-1})).to(at::kCPU);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  KVB_CHECK(params.temperature >= 0, "sampling: temperature must be >= 0, got ",
            params.temperature);
  KVB_CHECK(params.top_p > 0 && params.top_p <= 1, "sampling: top_p must be in (0, 1], got ",
            params.top_p);
}

// At top_p 1 every token is kept: one pass in id order draws from the same distribution as the
// sorted walk, without sorting the vocabulary (a sort of 128k doubles took milliseconds per
// token, as long as a GPU's decode step, inside both caches' token times). A token of
// probability 0 (a suppressed id) is never drawn.
int64_t Sampler::draw_in_id_order(const at::Tensor& probs) {
  const at::Tensor dense = probs.contiguous();
  const double* p = dense.data_ptr<double>();
  const int64_t n = probs.size(0);
  double mass = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < n; ++i) {
    mass += p[i];
    if (p[i] > 0) last = i;
  }
  double u = rng_.uniform() * mass;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    u -= p[i];
    if (u < 0) return i;
  }
  return last;  // rounding left u at or just above 0
}

int64_t Sampler::next(const at::Tensor& logits) {
  KVB_CHECK(logits.dim() == 1, "sampling: expected logits [vocab]");
  // NaN propagates to the max; -1 tells the caller (a softmax would spread it over every id).
  if (!std::isfinite(logits.max().item<double>())) return -1;
  if (params_.temperature == 0) return logits.argmax().item<int64_t>();
  at::Tensor probs = at::softmax(logits.to(at::kDouble).cpu() / params_.temperature, 0);
  if (params_.top_p >= 1) return draw_in_id_order(probs);
  // Stable: tied probabilities (common from 16-bit logits) keep the lower id first, so a seed
  // draws the same token on every libtorch and machine.
  auto sorted = probs.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
  at::Tensor p = std::get<0>(sorted), ids = std::get<1>(sorted);
  auto pa = p.accessor<double, 1>();
  // Keep tokens while the mass before them is below top_p (so the first is always kept), and
  // never one of probability 0 (a suppressed id): rounding can leave the mass of every other
  // token just under a top_p of 1, and the fallback below would then return it.
  int64_t keep = 0;
  double mass = 0;
  while (keep < p.size(0) && (keep == 0 || (mass < params_.top_p && pa[keep] > 0)))
    mass += pa[keep++];
  double u = rng_.uniform() * mass;
  for (int64_t i = 0; i < keep; ++i) {
    u -= pa[i];
    if (u < 0) return ids[i].item<int64_t>();
  }
  return ids[keep - 1].item<int64_t>();
}

}  // namespace kvbench
