// A latent-space decode problem for the tests of kernels/latent_decode.h: random bases (any
// matrix will do for the arithmetic), random fp16 coefficients of several sequences of
// different lengths, random queries, and the answer in float64 from the reconstructed keys and
// values (K_t = U_j c_t): the dense attention the latent one must equal. Host-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kv_encode.h"
#include "latent_decode.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {

struct LatentCase {
  int batch, q_heads, kv_heads, head_dim, group, rank, max_tokens;
  std::vector<int> lens;
  std::vector<uint16_t> k_coef, v_coef;  // fp16 bits
  std::vector<float> k_basis, v_basis, q;
  std::vector<double> want;

  kernels::LatentProblem problem(float* out) const {
    kernels::LatentProblem p;
    p.batch = batch, p.q_heads = q_heads, p.kv_heads = kv_heads, p.head_dim = head_dim;
    p.group = group, p.rank = rank, p.max_tokens = max_tokens, p.seq_lens = lens.data();
    p.k_coef = k_coef.data(), p.v_coef = v_coef.data();
    p.k_basis = k_basis.data(), p.v_basis = v_basis.data();
    p.softmax_scale = 1.f / std::sqrt(float(head_dim)), p.q = q.data(), p.out = out;
    return p;
  }
};

inline LatentCase latent_case(int kv_heads, int q_per_kv, int head_dim, int group, int rank,
                              std::vector<int> lens, uint32_t seed) {
  namespace e = kernels::encode;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  LatentCase c{int(lens.size()),
               kv_heads * q_per_kv,
               kv_heads,
               head_dim,
               group,
               rank,
               *std::max_element(lens.begin(), lens.end()),
               lens,
               {},
               {},
               {},
               {},
               {},
               {}};
  const int groups = kv_heads / group;
  // Basis entries ~ N(0, 1/rank) keep reconstructed keys near unit scale.
  for (auto* u : {&c.k_basis, &c.v_basis}) {
    u->resize(size_t(groups) * group * head_dim * rank);
    for (float& x : *u) x = normal(rng) / std::sqrt(float(rank));
  }
  for (auto* coef : {&c.k_coef, &c.v_coef}) {
    coef->assign(size_t(c.batch) * groups * c.max_tokens * rank, 0x7e00);  // NaN: never read
    for (int b = 0; b < c.batch; ++b)
      for (int g = 0; g < groups; ++g)
        for (int t = 0; t < lens[b]; ++t)
          for (int i = 0; i < rank; ++i)
            (*coef)[((size_t(b) * groups + g) * c.max_tokens + t) * rank + i] =
                e::half_bits(2.f * normal(rng));
  }
  c.q.resize(size_t(c.batch) * c.q_heads * head_dim);
  for (float& x : c.q) x = normal(rng);
  // float64: reconstruct each token's key and value, then plain softmax attention.
  const double scale = 1.0 / std::sqrt(double(head_dim));
  for (int b = 0; b < c.batch; ++b)
    for (int qh = 0; qh < c.q_heads; ++qh) {
      const int kv = qh / q_per_kv, g = kv / group, row0 = (kv % group) * head_dim;
      auto reconstruct = [&](const std::vector<uint16_t>& coef, const std::vector<float>& u,
                             int t) {
        std::vector<double> x(head_dim, 0.0);
        const uint16_t* cc = coef.data() + ((size_t(b) * groups + g) * c.max_tokens + t) * rank;
        for (int d = 0; d < head_dim; ++d)
          for (int i = 0; i < rank; ++i)
            x[d] += double(u[(size_t(g) * group * head_dim + row0 + d) * rank + i]) *
                    e::half_value(cc[i]);
        return x;
      };
      const float* q = c.q.data() + (size_t(b) * c.q_heads + qh) * head_dim;
      std::vector<double> s(lens[b]);
      for (int t = 0; t < lens[b]; ++t) {
        const auto k = reconstruct(c.k_coef, c.k_basis, t);
        for (int d = 0; d < head_dim; ++d) s[t] += q[d] * k[d];
        s[t] *= scale;
      }
      const double m = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += (x = std::exp(x - m));
      std::vector<double> o(head_dim, 0.0);
      for (int t = 0; t < lens[b]; ++t) {
        const auto v = reconstruct(c.v_coef, c.v_basis, t);
        for (int d = 0; d < head_dim; ++d) o[d] += s[t] / sum * v[d];
      }
      c.want.insert(c.want.end(), o.begin(), o.end());
    }
  return c;
}

// The shapes the GPU and emulated tests run (KV heads, queries per KV head, head_dim, KV heads
// per latent group, rank), and the host reference's answer to a case.
struct LatentShape {
  int kv, per, d, group, rank;
};
inline std::vector<LatentShape> latent_shapes() {
  return {{8, 4, 128, 1, 64}, {8, 4, 128, 2, 179}, {4, 2, 64, 4, 256}};
}
inline LatentCase latent_case_of(const LatentShape& s, const std::vector<int>& lens) {
  return latent_case(s.kv, s.per, s.d, s.group, s.rank, lens, 7 + s.rank);
}
inline std::vector<float> latent_host_answer(const LatentCase& c) {
  std::vector<float> host(c.want.size()), scratch(c.max_tokens + 2 * c.rank);
  kernels::latent_decode_host(c.problem(host.data()), scratch.data());
  return host;
}

}  // namespace kvbench::gpu_test
