// One decode step's eviction at one layer, in the steady state of a policy that drops the
// lowest of its scores (RetentionPolicy::drops_lowest: H2O, TOVA and ScissorHands on the paged
// cache, PagedKVCache::evict_steady): every record holds `held` = budget + 1 tokens per KV
// head, the retained-index kernel has just written each held token's scaled score for each
// query head (the step's logits), and each head drops one token. One launch does what took
// ~20 torch launches per layer (softmax, group sums, the padded add, the lowest's search, the
// gathers of the state and of the lists):
//   1. each query head's softmax over its held tokens (max and sum; p = exp(l - max) / sum);
//   2. each token's new state and score, by the policy's rule (SteadyRule);
//   3. the dropped token: among the first `count + 1` (the listed tokens and the tail's first:
//      the window of `recent` newest never goes), the last of the lowest score;
//   4. the state and the list without it: the state's rows past it move down one; the list's
//      entries past it move down one and the tail's first token ends it (the caller then
//      moves the tail on by one).
// Outputs go to fresh buffers (inputs are read only: a record's state and a list stay valid
// for whoever holds them). A block per (record, KV head), or per record for TOVA (its score
// is the mean over the layer's KV heads, so every head drops the same token).
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kv_encode.h"

namespace kvbench::kernels {

// What a record keeps and what its score is (methods.md: H2O, TOVA, ScissorHands).
enum class SteadyRule : int {
  // H2O: each token's attention summed over the steps, averaged over the query group; the
  // state is the sums, [kv_heads, held - 1] before the step; the score is the new sum.
  kSummed = 0,
  // TOVA: no state; the score is the newest query's attention averaged over the group and
  // then over the KV heads (the same for every head).
  kNewest = 1,
  // ScissorHands: the state is a ring of low-attention flags [kv_heads, held - 1, group,
  // window] (0/1 bytes), column `column` of which this step writes: p < 1 / held. The score
  // is minus each token's flags summed over the window and averaged over the group.
  kLowCounts = 2,
};

struct SteadyEvictProblem {
  SteadyRule rule = SteadyRule::kSummed;
  int records = 0;   // sequences evicting at this layer
  int kv_heads = 0;  // KV heads; query heads are kv_heads * group
  int group = 0;
  int held = 0;    // tokens each head holds, the step's new one included (budget + 1)
  int count = 0;   // listed tokens per head (held - recent - 1), >= 0
  int window = 0;  // kLowCounts: the ring's columns
  // The step's scaled scores: record e's query head q at logits + steps[e] * logit_row +
  // q * logit_stride, its first `held` entries (in the order the tokens are held).
  const float* logits = nullptr;
  int64_t logit_row = 0, logit_stride = 0;
  // [2 * records] int32: each record's row in logits, and (kLowCounts; else unread) the
  // offset of its ring column from its tail's first token: the column this step writes is
  // (tails[row] + offset) mod window. Row and offset stay the same from step to step while
  // the tails move on (a caller uploads them once); they change when the slots are compacted.
  const int* steps = nullptr;
  // Indexed by a record's row: its tail's first token (what ends the new list), as the step's
  // attention read it (RetainedProblem::tail_start).
  const int* tails = nullptr;
  const float* summed = nullptr;  // kSummed: [records, kv_heads, held - 1]
  const uint8_t* low = nullptr;   // kLowCounts: [records, kv_heads, held - 1, group, window]
  const int* lists = nullptr;     // [records, kv_heads, count]; unread when count is 0
  float* scores = nullptr;        // workspace: [records, kv_heads, held] (left unspecified)
  float* summed_out = nullptr;    // kSummed: [records, kv_heads, held - 1]
  uint8_t* low_out = nullptr;     // kLowCounts: [records, kv_heads, held - 1, group, window]
  int* lists_out = nullptr;       // [records, kv_heads, count]
  int* dropped = nullptr;         // [records, kv_heads]: each head's dropped index (< count + 1)
};

// Query heads a block handles at most (its softmax statistics in shared memory).
constexpr int kSteadyMaxQueryHeads = 256;

// Whether a block takes the query heads `rule` gives it: a KV head's group, or for TOVA every
// query head of the layer. A cache whose shape does not fit evicts without the kernel.
KVB_HD bool steady_evict_fits(SteadyRule rule, int kv_heads, int group) {
  return (rule == SteadyRule::kNewest ? kv_heads : 1) * group <= kSteadyMaxQueryHeads;
}

// Checks what can be checked without reading device memory; "" when the problem is valid.
inline const char* steady_evict_check(const SteadyEvictProblem& p) {
  if (p.records < 1 || p.kv_heads < 1 || p.group < 1)
    return "records, kv_heads and group must be positive";
  if (p.kv_heads > 65535) return "at most 65535 KV heads (a grid's y)";
  if (!steady_evict_fits(p.rule, p.kv_heads, p.group))
    return "at most 256 query heads per block (TOVA's: every head of the layer)";
  if (p.held < 2 || p.count < 0 || p.count > p.held - 1)
    return "held must be at least 2 and count in [0, held - 1]";
  if (p.logit_stride < p.held || p.logit_row < p.logit_stride * p.kv_heads * p.group)
    return "logit rows and strides must cover the held tokens of every query head";
  if (!p.logits || !p.steps || !p.tails || !p.scores || !p.dropped ||
      (p.count > 0 && !(p.lists && p.lists_out)))
    return "a required pointer is null";
  switch (p.rule) {
    case SteadyRule::kSummed:
      if (!p.summed || !p.summed_out) return "kSummed needs summed and summed_out";
      break;
    case SteadyRule::kNewest:
      break;
    case SteadyRule::kLowCounts:
      if (p.window < 1 || !p.low || !p.low_out)
        return "kLowCounts needs a positive window, low and low_out";
      break;
    default:
      return "unknown rule";
  }
  return "";
}

// KV heads a block scores together: every head for TOVA, else one.
KVB_HD int steady_heads_per_block(const SteadyEvictProblem& p) {
  return p.rule == SteadyRule::kNewest ? p.kv_heads : 1;
}

// Record e's query head q, token j: its scaled score.
KVB_HD float steady_logit(const SteadyEvictProblem& p, int e, int q, int j) {
  return p.logits[int64_t(p.steps[e]) * p.logit_row + q * p.logit_stride + j];
}

// Record e's tail's first token.
KVB_HD int steady_tail(const SteadyEvictProblem& p, int e) { return p.tails[p.steps[e]]; }

// The ring column record e writes this step (kLowCounts).
KVB_HD int steady_column(const SteadyEvictProblem& p, int e) {
  return (steady_tail(p, e) % p.window + p.steps[p.records + e]) % p.window;
}

// Token j's probability for query head q, from the head's max m and 1 / sum (inv).
KVB_HD float steady_prob(const SteadyEvictProblem& p, int e, int q, int j, float m, float inv) {
  return expf(steady_logit(p, e, q, j) - m) * inv;
}

// ScissorHands' flag of token j (of held) for query group member g at ring column w, the
// step's column (steady_column) taking p < 1 / held (the threshold rounded to float, as torch
// compares a float tensor with a double), the new token's other columns 0.
KVB_HD uint8_t steady_low_flag(const SteadyEvictProblem& p, int e, int h, int j, int g, int w,
                               float prob, int column) {
  if (w == column) return prob < float(1.0 / double(p.held)) ? 1 : 0;
  if (j == p.held - 1) return 0;
  return p.low[((int64_t(e) * p.kv_heads + h) * (p.held - 1) + j) * p.group * p.window +
               int64_t(g) * p.window + w];
}

// The list's entry i after dropping index d: entries past d move down one, the tail's first
// token (steady_tail) ends it.
KVB_HD int steady_list_entry(const SteadyEvictProblem& p, int e, int h, int i, int d) {
  const int src = i < d ? i : i + 1;
  return src < p.count ? p.lists[(int64_t(e) * p.kv_heads + h) * p.count + src] : steady_tail(p, e);
}

// The reference, one (record, head) at a time with every sum in order, in double but for each
// probability (the float expression the kernel computes, from the float max and the reciprocal
// of a double sum rounded to float): what the kernel computes, up to its sums' order. A NaN
// score ranks above every finite score (none but NaNs: the last candidate goes), as in the kernel
// and in torch's sort (top_tokens).
inline void steady_evict_host(const SteadyEvictProblem& p) {
  const int G = p.group, T = p.held;
  for (int e = 0; e < p.records; ++e) {
    const int column = p.rule == SteadyRule::kLowCounts ? steady_column(p, e) : 0;
    std::vector<float> m(size_t(p.kv_heads) * G), inv(m.size());
    for (int q = 0; q < p.kv_heads * G; ++q) {
      float mx = -INFINITY;
      for (int j = 0; j < T; ++j) mx = std::fmax(mx, steady_logit(p, e, q, j));
      double sum = 0;
      for (int j = 0; j < T; ++j) sum += std::exp(double(steady_logit(p, e, q, j)) - mx);
      m[size_t(q)] = mx, inv[size_t(q)] = float(1.0 / sum);
    }
    auto prob = [&](int q, int j) { return steady_prob(p, e, q, j, m[size_t(q)], inv[size_t(q)]); };
    // Each token's score per head (TOVA's the same for all).
    std::vector<double> score(size_t(p.kv_heads) * T);
    for (int h = 0; h < p.kv_heads; ++h)
      for (int j = 0; j < T; ++j) {
        double s = 0;
        if (p.rule == SteadyRule::kLowCounts) {
          for (int g = 0; g < G; ++g)
            for (int w = 0; w < p.window; ++w)
              s += steady_low_flag(p, e, h, j, g, w, prob(h * G + g, j), column);
          s = -s / G;
        } else if (p.rule == SteadyRule::kSummed) {
          for (int g = 0; g < G; ++g) s += prob(h * G + g, j);
          s /= G;
          if (j < T - 1) s += p.summed[(int64_t(e) * p.kv_heads + h) * (T - 1) + j];
        } else {
          for (int hh = 0; hh < p.kv_heads; ++hh) {
            double t = 0;
            for (int g = 0; g < G; ++g) t += prob(hh * G + g, j);
            s += t / G;
          }
          s /= p.kv_heads;
        }
        score[size_t(h) * T + j] = s;
        p.scores[(int64_t(e) * p.kv_heads + h) * T + j] = float(s);
      }
    for (int h = 0; h < p.kv_heads; ++h) {
      const double* sc = score.data() + size_t(h) * T;
      int d = -1;
      double lowest = INFINITY;
      for (int j = 0; j <= p.count; ++j) {
        const double s = std::isnan(sc[j]) ? INFINITY : sc[j];
        if (s <= lowest) lowest = s, d = j;  // the later of equal scores
      }
      p.dropped[int64_t(e) * p.kv_heads + h] = d;
      const int64_t at = int64_t(e) * p.kv_heads + h;
      for (int i = 0; i < p.count; ++i)
        p.lists_out[at * p.count + i] = steady_list_entry(p, e, h, i, d);
      for (int j = 0; j < T - 1; ++j) {
        const int src = j < d ? j : j + 1;
        if (p.rule == SteadyRule::kSummed) p.summed_out[at * (T - 1) + j] = float(sc[src]);
        if (p.rule != SteadyRule::kLowCounts) continue;
        for (int g = 0; g < G; ++g)
          for (int w = 0; w < p.window; ++w)
            p.low_out[(at * (T - 1) + j) * G * p.window + int64_t(g) * p.window + w] =
                steady_low_flag(p, e, h, src, g, w, prob(h * G + g, src), column);
      }
    }
  }
}

}  // namespace kvbench::kernels
