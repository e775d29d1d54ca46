// Random inputs of the transformer's fused per-row kernels (kernels/model_ops.h) in each
// activation dtype, and their float64 references (the formulas with no intermediate
// rounding). Shared by the host reference's tests (tests/unit/model_ops_test.cpp) and the
// CUDA kernels' (tests/gpu/model_ops_test.cpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "model_ops.h"

namespace kvbench::gpu_test {

// A host array of activations in `dtype`, read and written as floats.
struct ActArray {
  kernels::ActDtype dtype = kernels::ActDtype::kF32;
  size_t n = 0;
  std::vector<uint8_t> bytes;

  ActArray(kernels::ActDtype t, size_t count, float fill = NAN) : dtype(t), n(count) {
    bytes.resize(count * (t == kernels::ActDtype::kF32 ? 4 : 2));
    for (size_t i = 0; i < n; ++i) set(i, fill);
  }
  float at(size_t i) const { return kernels::load_act(bytes.data(), i, dtype); }
  void set(size_t i, float x) { kernels::store_act(bytes.data(), i, x, dtype); }
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  std::vector<float> floats() const {
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = at(i);
    return out;
  }
};

inline ActArray random_act(kernels::ActDtype t, size_t n, uint64_t seed, double mean,
                           double stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(mean, stddev);
  ActArray a(t, n);
  for (size_t i = 0; i < n; ++i) a.set(i, float(dist(rng)));
  return a;
}

// The worst rounding a kernel output may carry against the float64 formula, relative to the
// output's scale: two roundings to the dtype (the norm's), fp32 arithmetic for fp32.
inline double act_tolerance(kernels::ActDtype t) {
  return t == kernels::ActDtype::kF32 ? 2e-6 : (t == kernels::ActDtype::kF16 ? 2e-3 : 1.6e-2);
}

// One rounding of the dtype, relative to the output's scale.
inline double one_rounding(kernels::ActDtype t) {
  return t == kernels::ActDtype::kF32 ? 1e-6 : (t == kernels::ActDtype::kF16 ? 1e-3 : 8e-3);
}
// The norms round twice (x * s, then times the weight), and the device's s differs from the
// host's in its last bits (another summation order): a value at a rounding tie of x * s lands
// one unit apart, and the weight's rounding can make that two (up to 2^-9 of the scale in
// fp16, 2^-6 in bf16; found by a review replaying the kernel's arithmetic on the CPU, fp16
// 1 x 4096: 1.03e-3). fp32: 4096 squares summed in another order.
inline double two_roundings(kernels::ActDtype t) {
  return t == kernels::ActDtype::kF32 ? 4e-6 : (t == kernels::ActDtype::kF16 ? 2.5e-3 : 2e-2);
}

struct RmsNormCase {
  int rows, dim;
  float eps = 1e-5f;
  ActArray x, residual, weight;
  std::vector<double> want_x;    // x + residual, rounded to the dtype (as the kernel stores it)
  std::vector<double> want_out;  // float64 RMSNorm of want_x times the weight

  RmsNormCase(kernels::ActDtype t, int r, int d, bool with_residual, uint64_t seed)
      : rows(r),
        dim(d),
        x(random_act(t, size_t(r) * d, seed, 0.3, 1.5)),
        residual(with_residual ? random_act(t, size_t(r) * d, seed + 1, -0.1, 0.7)
                               : ActArray(t, 0)),
        weight(random_act(t, size_t(d), seed + 2, 1.0, 0.1)) {
    for (int i = 0; i < r; ++i) {
      double sum_sq = 0;
      for (int j = 0; j < d; ++j) {
        const size_t e = size_t(i) * d + j;
        float v = x.at(e);
        if (with_residual) v = kernels::round_act(v + residual.at(e), t);
        want_x.push_back(v);
        sum_sq += double(v) * v;
      }
      const double s = 1.0 / std::sqrt(sum_sq / d + eps);
      for (int j = 0; j < d; ++j) want_out.push_back(want_x[size_t(i) * d + j] * s * weight.at(j));
    }
  }
  kernels::RmsNormProblem problem(ActArray& x_io, const void* res, const void* w, void* out) const {
    kernels::RmsNormProblem p;
    p.rows = rows, p.dim = dim, p.eps = eps, p.dtype = x.dtype;
    p.x = x_io.data(), p.residual = res, p.weight = w, p.out = out;
    return p;
  }
};

struct RopeCase {
  int rows, q_heads, kv_heads, head_dim;
  float eps = 1e-6f;
  bool norms;
  ActArray qkv, q_norm, k_norm;
  std::vector<float> cos, sin;                 // [rows, head_dim]
  std::vector<double> want_q, want_k, want_v;  // [rows, heads, head_dim]

  RopeCase(kernels::ActDtype t, int r, int qh, int kvh, int hd, bool with_norms, uint64_t seed)
      : rows(r),
        q_heads(qh),
        kv_heads(kvh),
        head_dim(hd),
        norms(with_norms),
        qkv(random_act(t, size_t(r) * (qh + 2 * kvh) * hd, seed, 0.0, 2.0)),
        q_norm(random_act(t, size_t(hd), seed + 1, 1.0, 0.2)),
        k_norm(random_act(t, size_t(hd), seed + 2, 1.0, 0.2)) {
    const int heads = qh + 2 * kvh;
    for (int i = 0; i < r; ++i) {
      const double position = i == 0 ? 0 : 7.0 * i * i + 1000.0 * (i % 3);
      for (int d = 0; d < hd; ++d) {
        const double inv_freq = std::pow(10000.0, -double(2 * (d % (hd / 2))) / hd);
        cos.push_back(float(std::cos(position * inv_freq)));
        sin.push_back(float(std::sin(position * inv_freq)));
      }
      for (int h = 0; h < heads; ++h) {
        std::vector<double> row(static_cast<size_t>(hd));
        double sum_sq = 0;
        for (int d = 0; d < hd; ++d) {
          row[size_t(d)] = qkv.at((size_t(i) * heads + h) * hd + d);
          sum_sq += row[size_t(d)] * row[size_t(d)];
        }
        const bool is_v = h >= qh + kvh;
        if (norms && !is_v) {
          const double s = 1.0 / std::sqrt(sum_sq / hd + eps);
          const ActArray& w = h < qh ? q_norm : k_norm;
          for (int d = 0; d < hd; ++d) row[size_t(d)] *= s * w.at(size_t(d));
        }
        std::vector<double>& out = h < qh ? want_q : (is_v ? want_v : want_k);
        for (int d = 0; d < hd; ++d) {
          if (is_v) {
            out.push_back(row[size_t(d)]);
            continue;
          }
          const double c = cos[size_t(i) * hd + d], s = sin[size_t(i) * hd + d];
          const double rotated = d < hd / 2 ? -row[size_t(d + hd / 2)] : row[size_t(d - hd / 2)];
          out.push_back(row[size_t(d)] * c + rotated * s);
        }
      }
    }
  }
  kernels::RopeSplitProblem problem(const void* in, const float* c, const float* s, const void* qn,
                                    const void* kn, void* q, void* k, void* v) const {
    kernels::RopeSplitProblem p;
    p.rows = rows, p.q_heads = q_heads, p.kv_heads = kv_heads, p.head_dim = head_dim;
    p.eps = eps, p.dtype = qkv.dtype, p.qkv = in, p.cos = c, p.sin = s;
    p.q_norm = norms ? qn : nullptr, p.k_norm = norms ? kn : nullptr;
    p.q = q, p.k = k, p.v = v;
    return p;
  }
};

struct SiluMulCase {
  int rows, dim;
  ActArray gate_up;
  std::vector<double> want;

  SiluMulCase(kernels::ActDtype t, int r, int d, uint64_t seed)
      : rows(r), dim(d), gate_up(random_act(t, size_t(r) * 2 * d, seed, 0.0, 3.0)) {
    for (int i = 0; i < r; ++i)
      for (int j = 0; j < d; ++j) {
        const double g = gate_up.at(size_t(i) * 2 * d + j),
                     u = gate_up.at(size_t(i) * 2 * d + d + j);
        want.push_back(g / (1.0 + std::exp(-g)) * u);
      }
  }
  kernels::SiluMulProblem problem(const void* in, void* out) const {
    kernels::SiluMulProblem p;
    p.rows = rows, p.dim = dim, p.dtype = gate_up.dtype, p.gate_up = in, p.out = out;
    return p;
  }
};

}  // namespace kvbench::gpu_test
