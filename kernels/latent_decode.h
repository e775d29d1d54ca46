// Decode attention over a low-rank cache read in its latent space (kvproj: keys with RoPE
// applied and values, each stored as fp16 coefficients c = U^T x in an orthonormal basis U
// [g * head_dim, r] per layer and group of g KV heads). Nothing is reconstructed per token:
// query head h on KV head j of its group scores (U_j^T q) . c_t, where U_j is the head's
// head_dim rows of U, so a step reads r coefficients per token instead of head_dim values, and
// values are summed in latent space and projected back once, out = U_j (sum_t p_t c_t).
// (Palu's keys are stored before RoPE, so each would need U_j c_t rotated at its position: not
// this kernel.)
//
// Three phases per (sequence, query head), written as functions compiled for the host and the
// device alike: the latent query, the scores (one per token), the latent value sum and its
// projection. latent_decode_host() below runs them in order; the CUDA launcher
// (latent_decode_launcher.h) runs one block per (sequence, query head), threads over tokens,
// then over rank, then over head_dim. Torch-free and CUDA-free unless compiled by nvcc.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>

#include "kv_encode.h"
#include "kv_format.h"

namespace kvbench::kernels {

constexpr int kLatentMaxRank = 1024;

struct LatentProblem {
  int batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  int group = 1;                  // g: KV heads sharing one latent
  int rank = 0;                   // r
  int max_tokens = 0;             // row stride of the coefficient arrays (tokens)
  const int* seq_lens = nullptr;  // [batch], each in [1, max_tokens]
  // [batch, kv_heads / g, max_tokens, rank] fp16 bits: each token's key / value coefficients.
  const uint16_t* k_coef = nullptr;
  const uint16_t* v_coef = nullptr;
  // [kv_heads / g, g * head_dim, rank] fp32: the layer's key and value bases.
  const float* k_basis = nullptr;
  const float* v_basis = nullptr;
  float softmax_scale = 0.f;
  const float* q = nullptr;  // [batch, q_heads, head_dim] fp32
  float* out = nullptr;      // [batch, q_heads, head_dim] fp32
};

namespace latent {

// Where (sequence b, query head qh) reads: its latent group and its head's rows in the basis.
struct Head {
  int group_index;  // the latent group of its KV head
  int row0;         // first row of its KV head in the group's basis (j * head_dim)
};
KVB_HD Head head_of(const LatentProblem& p, int qh) {
  const int kv = qh / (p.q_heads / p.kv_heads);
  return {kv / p.group, (kv % p.group) * p.head_dim};
}

KVB_HD const float* basis(const LatentProblem& p, const float* bases, const Head& h) {
  return bases + (size_t(h.group_index) * p.group * p.head_dim + h.row0) * p.rank;
}

KVB_HD const uint16_t* coefficients(const LatentProblem& p, const uint16_t* coef, int b,
                                    const Head& h) {
  return coef + (size_t(b) * (p.kv_heads / p.group) + h.group_index) * p.max_tokens * p.rank;
}

// Component i of the latent query U_j^T q.
KVB_HD float query_component(const LatentProblem& p, int b, int qh, int i) {
  const Head h = head_of(p, qh);
  const float* u = basis(p, p.k_basis, h);
  const float* q = p.q + (size_t(b) * p.q_heads + qh) * p.head_dim;
  float acc = 0.f;
  for (int d = 0; d < p.head_dim; ++d) acc = fmaf(u[size_t(d) * p.rank + i], q[d], acc);
  return acc;
}

// The scaled score of token t against the latent query q_lat [rank].
KVB_HD float score(const LatentProblem& p, int b, int qh, const float* q_lat, int t) {
  const uint16_t* c = coefficients(p, p.k_coef, b, head_of(p, qh)) + size_t(t) * p.rank;
  float acc = 0.f;
  for (int i = 0; i < p.rank; ++i) acc = fmaf(q_lat[i], encode::half_value(c[i]), acc);
  return acc * p.softmax_scale;
}

// Component i of the latent value sum over tokens [0, T): sum_t w_t c_t[i], w = weights.
KVB_HD float value_component(const LatentProblem& p, int b, int qh, const float* weights, int T,
                             int i) {
  const uint16_t* c = coefficients(p, p.v_coef, b, head_of(p, qh)) + i;
  float acc = 0.f;
  for (int t = 0; t < T; ++t)
    acc = fmaf(weights[t], encode::half_value(c[size_t(t) * p.rank]), acc);
  return acc;
}

// Output channel d: (U_j v_lat)[d].
KVB_HD float output_channel(const LatentProblem& p, int qh, const float* v_lat, int d) {
  const float* u = basis(p, p.v_basis, head_of(p, qh)) + size_t(d) * p.rank;
  float acc = 0.f;
  for (int i = 0; i < p.rank; ++i) acc = fmaf(u[i], v_lat[i], acc);
  return acc;
}

}  // namespace latent

// "" when the problem is valid (what can be checked without reading device memory).
inline const char* latent_check(const LatentProblem& p) {
  if (p.batch < 1 || p.q_heads < 1 || p.kv_heads < 1 || p.head_dim < 1)
    return "batch, heads and head_dim must be positive";
  if (p.q_heads % p.kv_heads != 0) return "q_heads must be a multiple of kv_heads";
  if (p.group < 1 || p.kv_heads % p.group != 0) return "group must divide kv_heads";
  if (p.rank < 1 || p.rank > kLatentMaxRank || p.rank > p.group * p.head_dim)
    return "rank must be in [1, min(1024, group * head_dim)]";
  if (p.max_tokens < 1) return "max_tokens must be >= 1";
  if (!p.seq_lens || !p.k_coef || !p.v_coef || !p.k_basis || !p.v_basis || !p.q || !p.out)
    return "a required pointer is null";
  return "";
}

// The reference loop: the three phases for every (sequence, query head) in order. `scratch`
// holds max_tokens + 2 * rank floats.
inline void latent_decode_host(const LatentProblem& p, float* scratch) {
  float* q_lat = scratch;
  float* v_lat = scratch + p.rank;
  float* w = scratch + 2 * p.rank;
  for (int b = 0; b < p.batch; ++b)
    for (int qh = 0; qh < p.q_heads; ++qh) {
      const int T = p.seq_lens[b];
      for (int i = 0; i < p.rank; ++i) q_lat[i] = latent::query_component(p, b, qh, i);
      float m = -INFINITY, sum = 0.f;
      for (int t = 0; t < T; ++t) m = fmaxf(m, w[t] = latent::score(p, b, qh, q_lat, t));
      for (int t = 0; t < T; ++t) sum += (w[t] = expf(w[t] - m));
      for (int t = 0; t < T; ++t) w[t] /= sum;
      for (int i = 0; i < p.rank; ++i) v_lat[i] = latent::value_component(p, b, qh, w, T, i);
      float* out = p.out + (size_t(b) * p.q_heads + qh) * p.head_dim;
      for (int d = 0; d < p.head_dim; ++d) out[d] = latent::output_channel(p, qh, v_lat, d);
    }
}

}  // namespace kvbench::kernels
