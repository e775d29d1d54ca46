// Random inputs of the steady-state eviction kernel (kernels/steady_evict.h), shared by the
// CUDA kernel's test (tests/gpu/steady_evict_test.cpp), its emulation on the CPU
// (tests/unit/steady_emulation_test.cpp) and the host reference's check against the torch
// formulation (tests/unit/steady_evict_test.cpp). Host arrays.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "steady_evict.h"

namespace kvbench::gpu_test {

struct SteadyShape {
  kernels::SteadyRule rule;
  int records, kv_heads, group, held, count, window;
  bool nans = false;  // NaN scores (SteadyCase's constructor says which)
};

// H2O, TOVA and ScissorHands at a Llama-3-8B layer's heads (8 KV, groups of 4) holding
// budget + 1 = 513 tokens (h2o-512: 256 listed and a 256-token window), and small odd ones:
// one query per KV head, no list (every token in the window), more tokens than a block's
// threads among the candidates, a ring of 5 columns, and flags of one column and one query
// (counts 0 or 1: about half the candidates tie for the lowest, two or three per thread);
// NaN scores, which rank above every finite score, for H2O and TOVA (ScissorHands' are counts).
inline std::vector<SteadyShape> steady_shapes() {
  using R = kernels::SteadyRule;
  return {{R::kSummed, 3, 8, 4, 513, 256, 0},       {R::kSummed, 2, 2, 1, 37, 0, 0},
          {R::kSummed, 2, 3, 2, 300, 299, 0},       {R::kNewest, 4, 8, 4, 513, 512, 0},
          {R::kNewest, 1, 3, 2, 300, 299, 0},       {R::kLowCounts, 3, 8, 4, 513, 256, 32},
          {R::kLowCounts, 2, 4, 2, 129, 64, 5},     {R::kLowCounts, 1, 2, 3, 40, 39, 1},
          {R::kLowCounts, 2, 2, 1, 600, 599, 1},    {R::kSummed, 3, 8, 4, 513, 256, 0, true},
          {R::kSummed, 2, 3, 2, 300, 299, 0, true}, {R::kNewest, 2, 3, 2, 300, 299, 0, true}};
}

inline std::string name(const SteadyShape& s) {
  const char* rule = s.rule == kernels::SteadyRule::kSummed   ? "summed"
                     : s.rule == kernels::SteadyRule::kNewest ? "newest"
                                                              : "low";
  std::ostringstream out;
  out << rule << "_e" << s.records << "_h" << s.kv_heads << "_g" << s.group << "_held" << s.held
      << "_count" << s.count << "_w" << s.window << (s.nans ? "_nan" : "");
  return out.str();
}

// What the kernel writes, poisoned first (NaN scores, sums at -3e38: the NaN cases' sums hold
// NaN; 0xcd bytes and entries).
struct SteadyOutputs {
  std::vector<float> scores, summed;
  std::vector<uint8_t> low;
  std::vector<int> lists, dropped;
};

struct SteadyCase {
  SteadyShape s;
  int64_t row, stride;  // logits: rows of `row` floats, query heads `stride` apart
  std::vector<float> logits, summed;
  std::vector<uint8_t> low;
  std::vector<int> steps, tails, lists;  // tails by logits row

  explicit SteadyCase(const SteadyShape& shape) : s(shape) {
    const int E = s.records, H = s.kv_heads, G = s.group, T = s.held;
    std::mt19937 rng(uint32_t(31 * T + 7 * E + int(s.rule)));
    std::normal_distribution<float> normal(0.f, 1.f);
    std::uniform_real_distribution<float> uniform(0.f, 2.f);
    // One more row than records, the records' rows reversed; the spare row and each head's
    // padding past `held` are NaN, so a read outside the held scores shows.
    stride = T + 3, row = stride * H * G;
    logits.assign(size_t(row) * (E + 1), NAN);
    for (int r = 0; r < E; ++r)
      for (int q = 0; q < H * G; ++q)
        for (int j = 0; j < T; ++j) logits[size_t(r * row + q * stride + j)] = 3.f * normal(rng);
    for (int e = 0; e < E; ++e) steps.push_back(E - 1 - e);
    for (int e = 0; e < E; ++e) steps.push_back(s.window > 0 ? (3 * e + 1) % s.window : 0);
    // Tails past every listed slot; the spare row's is never read.
    tails.assign(size_t(E) + 1, -7);
    for (int e = 0; e < E; ++e) tails[size_t(E - 1 - e)] = T + 1000 + e;
    if (s.rule == kernels::SteadyRule::kSummed)
      for (int64_t i = 0; i < int64_t(E) * H * (T - 1); ++i) summed.push_back(uniform(rng));
    if (s.rule == kernels::SteadyRule::kLowCounts)
      for (int64_t i = 0; i < int64_t(E) * H * (T - 1) * G * s.window; ++i)
        low.push_back(uint8_t(rng() % 2));
    for (int64_t i = 0; i < int64_t(E) * H * s.count; ++i) lists.push_back(int(rng() % 100000));
    if (s.nans) put_nans();
  }

  // The last record's first query's row (row 0): its KV head's scores, TOVA's every head's,
  // none but NaNs (its softmax is NaN); H2O: record 0's head 0 sums of tokens 0 and 2, NaN
  // among numbers.
  void put_nans() {
    logits[0] = NAN;
    if (s.rule == kernels::SteadyRule::kSummed) summed[0] = summed[2] = NAN;
  }

  SteadyOutputs poisoned() const {
    const int64_t heads = int64_t(s.records) * s.kv_heads;
    SteadyOutputs o;
    o.scores.assign(size_t(heads * s.held), NAN);
    if (s.rule == kernels::SteadyRule::kSummed)
      o.summed.assign(size_t(heads * (s.held - 1)), -3e38f);
    if (s.rule == kernels::SteadyRule::kLowCounts)
      o.low.assign(size_t(heads * (s.held - 1) * s.group * s.window), 0xcd);
    o.lists.assign(size_t(heads * s.count), -0x32323233);
    o.dropped.assign(size_t(heads), -0x32323233);
    return o;
  }

  // The problem over the host arrays, writing into `o`.
  kernels::SteadyEvictProblem problem(SteadyOutputs& o) const {
    kernels::SteadyEvictProblem p;
    p.rule = s.rule, p.records = s.records, p.kv_heads = s.kv_heads, p.group = s.group;
    p.held = s.held, p.count = s.count, p.window = s.window;
    p.logits = logits.data(), p.logit_row = row, p.logit_stride = stride;
    p.steps = steps.data(), p.tails = tails.data();
    p.summed = summed.empty() ? nullptr : summed.data();
    p.low = low.empty() ? nullptr : low.data();
    p.lists = lists.empty() ? nullptr : lists.data();
    p.scores = o.scores.data();
    p.summed_out = o.summed.empty() ? nullptr : o.summed.data();
    p.low_out = o.low.empty() ? nullptr : o.low.data();
    p.lists_out = o.lists.empty() ? nullptr : o.lists.data();
    p.dropped = o.dropped.data();
    return p;
  }

  // The smallest gap, relative, between the lowest candidate score of a head and any other
  // (`want` from the host reference): above float's rounding, the float kernel must drop the
  // same token. ScissorHands' scores are counts of flags, exact once every flag is: its gap is
  // the step's probabilities' distance from the flag's threshold 1 / held, relative.
  double decidable_gap(const SteadyOutputs& want) const {
    if (s.rule == kernels::SteadyRule::kLowCounts) return threshold_margin();
    double gap = INFINITY;
    for (int64_t h = 0; h < int64_t(s.records) * s.kv_heads; ++h) {
      const float* sc = want.scores.data() + h * s.held;
      const int d = want.dropped[size_t(h)];
      for (int j = 0; j <= s.count; ++j)
        if (j != d) gap = std::min(gap, double(sc[j] - sc[d]) / std::abs(double(sc[d])));
    }
    return gap;  // NaN scores give no gap (std::min keeps gap)
  }

  // "" when the drops in `want` follow the NaN rule: a head of none but NaNs drops its last
  // candidate, any other a number; and the case holds both kinds of head.
  std::string nan_rule_broken(const SteadyOutputs& want) const {
    int all_nan = 0, mixed = 0;
    for (int64_t h = 0; h < int64_t(s.records) * s.kv_heads; ++h) {
      const float* sc = want.scores.data() + h * s.held;
      const int d = want.dropped[size_t(h)];
      int nans = 0;
      for (int j = 0; j <= s.count; ++j) nans += std::isnan(sc[j]);
      all_nan += nans == s.count + 1, mixed += nans > 0 && nans <= s.count;
      if (nans == s.count + 1 ? d != s.count : std::isnan(sc[d]))
        return "head " + std::to_string(h) + " dropped " + std::to_string(d);
    }
    if (!all_nan) return "no head of none but NaNs";
    if (s.rule == kernels::SteadyRule::kSummed && !mixed) return "no head of NaNs among numbers";
    return "";
  }

  // The step's probabilities (in double) nearest the threshold, relative to it.
  double threshold_margin() const {
    const double threshold = double(float(1.0 / double(s.held)));
    double margin = INFINITY;
    for (int e = 0; e < s.records; ++e)
      for (int q = 0; q < s.kv_heads * s.group; ++q) {
        const float* l = logits.data() + size_t(steps[size_t(e)] * row + q * stride);
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < s.held; ++j) mx = std::max(mx, double(l[j]));
        for (int j = 0; j < s.held; ++j) sum += std::exp(double(l[j]) - mx);
        for (int j = 0; j < s.held; ++j)
          margin = std::min(margin, std::abs(std::exp(l[j] - mx) / sum - threshold) / threshold);
      }
    return margin;
  }

  // "" when `got` is what `want` (the host reference's) is: the same drops, lists and flags,
  // sums within 1e-5 relative (float sums in another order against double ones).
  std::string mismatch(const SteadyOutputs& got, const SteadyOutputs& want) const {
    std::ostringstream out;
    for (size_t i = 0; i < want.dropped.size(); ++i)
      if (got.dropped[i] != want.dropped[i]) {
        out << "head " << i << " dropped " << got.dropped[i] << ", want " << want.dropped[i];
        return out.str();
      }
    for (size_t i = 0; i < want.lists.size(); ++i)
      if (got.lists[i] != want.lists[i]) {
        out << "list entry " << i << " is " << got.lists[i] << ", want " << want.lists[i];
        return out.str();
      }
    for (size_t i = 0; i < want.summed.size(); ++i)
      if (!(std::isnan(want.summed[i]) && std::isnan(got.summed[i])) &&
          !(std::abs(got.summed[i] - want.summed[i]) <= 1e-5f * std::abs(want.summed[i]))) {
        out << "sum " << i << " is " << got.summed[i] << ", want " << want.summed[i];
        return out.str();
      }
    for (size_t i = 0; i < want.low.size(); ++i)
      if (got.low[i] != want.low[i]) {
        out << "ring byte " << i << " is " << int(got.low[i]) << ", want " << int(want.low[i]);
        return out.str();
      }
    return "";
  }
};

}  // namespace kvbench::gpu_test
