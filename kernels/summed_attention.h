// H2O's accumulated attention of a prefill block on the GPU path (retention_policy.h,
// summed_attention): per held key, its softmax probabilities summed over the block's queries
// and averaged over each KV head's query group.
//
// The torch formulation builds every chunk's [heads, 256, keys] fp32 score matrix (fp32
// CUDA-core products), then a softmax and a sum over it: at 8k tokens a few GB of traffic and
// ~0.3 TFLOP of fp32 products per layer and sequence, which would make an H2O prefill ~0.4x
// the fp16 cache's. The kernels here never write a score: one pass gives each query the
// log-sum-exp of its scores (tensor-core products, a running maximum), a second recomputes
// the scores key tile by key tile and sums exp(score - lse) over the queries in registers.
// Both read 16-bit q and k (the model's dtype); their products are exact in fp32.
//
// Which keys a query sees follows the contract of summed_attention(): the block's n keys are
// the last n held, in position order, and every key before them is earlier than each query.
// So query i of the block sees keys j <= held - n + i; key positions are not needed.
// Torch-free and CUDA-free: plain C++ unless compiled by nvcc.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kv_encode.h"

namespace kvbench::kernels {

struct SummedAttentionProblem {
  int heads = 0, kv_heads = 0, head_dim = 0;
  int n = 0;                    // the block's queries
  int held = 0;                 // keys held, the block's own n last (held >= n)
  bool bf16 = false;            // q and k are bf16 (else fp16)
  float scale = 0.f;            // the scores' scale, 1/sqrt(head_dim)
  const uint16_t* q = nullptr;  // [heads, n, head_dim]
  const uint16_t* k = nullptr;  // [kv_heads, held, head_dim]
  // Optional, fp16 only: the keys' remainders, so that a key is k + k_lo * 2^-11 (keys that
  // are no 16-bit values, such as dequantized codes, split in two fp16 parts: 22 bits of
  // mantissa, agreement with fp32 scores to ~2^-22 relative). Each score is then two products.
  const uint16_t* k_lo = nullptr;
  float* lse = nullptr;  // [heads, n] workspace: log2 of each query's sum of 2^score'
  float* out = nullptr;  // [kv_heads, held]
};

// log2(e): the kernels work in base 2 (score' = score * log2(e), one ex2 per probability).
constexpr float kSummedLog2e = 1.4426950408889634f;
// The weight of k_lo: a remainder scaled up by 2^11 keeps fp16's 11 bits (for |k| >= 2^-12;
// below, a subnormal remainder errs by at most ~2^-36 absolute). 2^12 could overflow.
constexpr float kSummedLoScale = 1.f / 2048.f;

// Checks what can be checked without reading device memory; "" when the problem is valid.
// (The GPU kernels take head_dim 64 and 128: summed_attention_gpu_shape.)
inline const char* summed_attention_check(const SummedAttentionProblem& p) {
  if (p.heads < 1 || p.kv_heads < 1 || p.head_dim < 1 || p.n < 1)
    return "heads, kv_heads, head_dim and n must be positive";
  if (p.heads % p.kv_heads != 0) return "heads must be a multiple of kv_heads";
  if (p.held < p.n) return "the block's n keys must be among the held";
  if (!(p.scale > 0.f && p.scale <= 3.4e38f)) return "scale must be positive and finite";
  if (!p.q || !p.k || !p.lse || !p.out) return "a required pointer is null";
  if (p.k_lo && p.bf16) return "k_lo needs fp16 q and k";
  return "";
}

inline bool summed_attention_gpu_shape(int head_dim) { return head_dim == 64 || head_dim == 128; }

KVB_HD float summed_value(bool bf16, uint16_t bits) {
  return bf16 ? encode::bf16_value(bits) : encode::half_value(bits);
}

// Query i of head h against key j, times scale * log2(e), channels summed in order.
inline float summed_score_host(const SummedAttentionProblem& p, int h, int i, int j) {
  const int group = p.heads / p.kv_heads;
  const uint16_t* q = p.q + (size_t(h) * p.n + i) * p.head_dim;
  const size_t row = (size_t(h / group) * p.held + j) * p.head_dim;
  float s = 0.f, lo = 0.f;  // two sums, as the kernels' two products
  for (int d = 0; d < p.head_dim; ++d) {
    const float x = summed_value(p.bf16, q[d]);
    s = std::fma(x, summed_value(p.bf16, p.k[row + d]), s);
    if (p.k_lo) lo = std::fma(x, summed_value(false, p.k_lo[row + d]), lo);
  }
  return std::fma(lo, kSummedLoScale, s) * (p.scale * kSummedLog2e);
}

// The reference: each query's lse over the keys it sees, then each key's probabilities summed
// over the group's queries that see it, in order.
inline void summed_attention_host(const SummedAttentionProblem& p) {
  const int group = p.heads / p.kv_heads, before = p.held - p.n;
  for (int h = 0; h < p.heads; ++h)
    for (int i = 0; i < p.n; ++i) {
      float m = -INFINITY, l = 0.f;
      for (int j = 0; j <= before + i; ++j) m = std::fmax(m, summed_score_host(p, h, i, j));
      for (int j = 0; j <= before + i; ++j) l += std::exp2(summed_score_host(p, h, i, j) - m);
      p.lse[size_t(h) * p.n + i] = m + std::log2(l);
    }
  for (int kvh = 0; kvh < p.kv_heads; ++kvh)
    for (int j = 0; j < p.held; ++j) {
      float sum = 0.f;
      for (int h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int i = j > before ? j - before : 0; i < p.n; ++i)
          sum += std::exp2(summed_score_host(p, h, i, j) - p.lse[size_t(h) * p.n + i]);
      p.out[size_t(kvh) * p.held + j] = sum / float(group);
    }
}

}  // namespace kvbench::kernels
