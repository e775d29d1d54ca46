// The transformer's elementwise and per-row work in a decode step, fused into three kernels:
//   rms_norm    (optionally x += residual first, in place): LlamaRMSNorm of each row
//   rope_split  the fused QKV projection's rows -> contiguous q, k, v, with Qwen3's per-head
//               q/k RMSNorm and RoPE applied to q and k
//   silu_mul    the fused gate/up projection's rows -> silu(gate) * up
// Eager libtorch spends about 45 operator launches per layer on this work (dtype casts, pow,
// mean, rsqrt, cat, neg, mul, add ...), each costing the host several microseconds, which on a
// GPU is as long as a whole layer's weights take to stream at batch 16: a decode step becomes
// bound by the host, and every byte the KV cache saves is hidden (docs/perf-notes.md).
//
// Each element follows the eager formulas' roundings where they round to the activation
// dtype (the norm's output before the weight multiplies it, the residual sum, silu before the
// product), and computes in fp32 in between; RoPE rounds once (eager rounds each of its three
// terms), with cos/sin in fp32. So outputs equal eager's up to fp32 summation order and one
// rounding of the activation dtype (the tests state the bounds).
//
// The per-element functions below are compiled for the host and the device alike; the *_host
// functions run them in order (the reference the CUDA kernels are tested against, and the
// emulated GPU path on the CPU); model_ops_launcher.h launches them. Torch-free; CUDA-free
// unless compiled by nvcc.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kv_encode.h"  // encode::half_bits, bf16_bits, ...
#include "kv_format.h"  // KVB_HD

namespace kvbench::kernels {

enum class ActDtype : int { kF32 = 0, kF16, kBf16 };

KVB_HD float load_act(const void* base, size_t i, ActDtype t) {
  if (t == ActDtype::kF32) return static_cast<const float*>(base)[i];
  const uint16_t bits = static_cast<const uint16_t*>(base)[i];
  return t == ActDtype::kF16 ? encode::half_value(bits) : encode::bf16_value(bits);
}

// x rounded to the activation dtype (round to nearest even), as a float.
KVB_HD float round_act(float x, ActDtype t) {
  if (t == ActDtype::kF32) return x;
  return t == ActDtype::kF16 ? encode::half_value(encode::half_bits(x))
                             : encode::bf16_value(encode::bf16_bits(x));
}

KVB_HD void store_act(void* base, size_t i, float x, ActDtype t) {
  if (t == ActDtype::kF32) {
    static_cast<float*>(base)[i] = x;
    return;
  }
  static_cast<uint16_t*>(base)[i] =
      t == ActDtype::kF16 ? encode::half_bits(x) : encode::bf16_bits(x);
}

// 1 / sqrt(mean(x^2) + eps) from a row's sum of squares.
KVB_HD float rms_scale(float sum_sq, int dim, float eps) {
  return 1.0f / sqrtf(sum_sq / float(dim) + eps);
}

// LlamaRMSNorm's output: (x * scale) rounded to the dtype, times the weight, rounded again.
KVB_HD float rms_out(float x, float scale, float weight, ActDtype t) {
  return round_act(round_act(x * scale, t) * weight, t);
}

// RoPE of element d of a head row (rotate-half layout: d pairs with d +- head_dim / 2).
KVB_HD float rope_out(const float* row, int d, int head_dim, float cos_d, float sin_d) {
  const int half = head_dim / 2;
  const float rotated = d < half ? -row[d + half] : row[d - half];
  return row[d] * cos_d + rotated * sin_d;
}

KVB_HD float silu_mul_out(float gate, float up, ActDtype t) {
  return round_act(round_act(gate / (1.0f + expf(-gate)), t) * up, t);
}

struct RmsNormProblem {
  int rows = 0, dim = 0;
  float eps = 1e-6f;
  ActDtype dtype = ActDtype::kF32;
  void* x = nullptr;               // [rows, dim]; with a residual, x += residual in place first
  const void* residual = nullptr;  // [rows, dim] or null
  const void* weight = nullptr;    // [dim]
  void* out = nullptr;             // [rows, dim]; may not alias x
};

struct RopeSplitProblem {
  int rows = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  float eps = 1e-6f;  // of the per-head norms
  ActDtype dtype = ActDtype::kF32;
  const void* qkv = nullptr;     // [rows, (q_heads + 2 kv_heads) * head_dim]: q, then k, then v
  const float* cos = nullptr;    // [rows, head_dim] fp32, the row's position (both halves)
  const float* sin = nullptr;    // [rows, head_dim]
  const void* q_norm = nullptr;  // [head_dim] or null: Qwen3's RMSNorm of each q head
  const void* k_norm = nullptr;  // [head_dim] or null
  void *q = nullptr, *k = nullptr, *v = nullptr;  // [rows, heads, head_dim] each, contiguous
};

struct SiluMulProblem {
  int rows = 0, dim = 0;
  ActDtype dtype = ActDtype::kF32;
  const void* gate_up = nullptr;  // [rows, 2 dim]: gate, then up
  void* out = nullptr;            // [rows, dim]
};

constexpr int kRopeMaxHeadDim = 256;

// Why a problem cannot run ("" when it can).
inline std::string model_ops_check(const RmsNormProblem& p) {
  if (p.rows < 0 || p.dim < 1) return "rms_norm: rows >= 0 and dim >= 1 expected";
  if (!p.x || !p.weight || !p.out) return "rms_norm: x, weight and out are required";
  if (p.out == p.x) return "rms_norm: out may not alias x";
  return "";
}

inline std::string model_ops_check(const RopeSplitProblem& p) {
  if (p.rows < 0 || p.q_heads < 1 || p.kv_heads < 1) return "rope_split: bad shape";
  if (p.head_dim < 2 || p.head_dim % 2 != 0 || p.head_dim > kRopeMaxHeadDim)
    return "rope_split: head_dim must be even and at most 256";
  if (!p.qkv || !p.cos || !p.sin || !p.q || !p.k || !p.v)
    return "rope_split: qkv, cos, sin, q, k and v are required";
  return "";
}

inline std::string model_ops_check(const SiluMulProblem& p) {
  if (p.rows < 0 || p.dim < 1) return "silu_mul: rows >= 0 and dim >= 1 expected";
  if (!p.gate_up || !p.out) return "silu_mul: gate_up and out are required";
  return "";
}

// One head of one row: loads it (norming it first when `norm` is set), applies RoPE when
// `rope`, and stores it into `dst` at `dst_index`. `scratch` holds head_dim floats.
KVB_HD void rope_head(const RopeSplitProblem& p, const void* src, size_t src_index,
                      const void* norm, bool rope, const float* cos, const float* sin, void* dst,
                      size_t dst_index, float* scratch) {
  float sum_sq = 0.0f;
  for (int d = 0; d < p.head_dim; ++d) {
    scratch[d] = load_act(src, src_index + d, p.dtype);
    sum_sq += scratch[d] * scratch[d];
  }
  if (norm) {
    const float s = rms_scale(sum_sq, p.head_dim, p.eps);
    for (int d = 0; d < p.head_dim; ++d)
      scratch[d] = rms_out(scratch[d], s, load_act(norm, d, p.dtype), p.dtype);
  }
  for (int d = 0; d < p.head_dim; ++d) {
    const float y = rope ? rope_out(scratch, d, p.head_dim, cos[d], sin[d]) : scratch[d];
    store_act(dst, dst_index + d, y, p.dtype);
  }
}

inline void rms_norm_host(const RmsNormProblem& p) {
  for (int r = 0; r < p.rows; ++r) {
    const size_t base = size_t(r) * p.dim;
    float sum_sq = 0.0f;
    for (int i = 0; i < p.dim; ++i) {
      float x = load_act(p.x, base + i, p.dtype);
      if (p.residual) {
        x = round_act(x + load_act(p.residual, base + i, p.dtype), p.dtype);
        store_act(p.x, base + i, x, p.dtype);
      }
      sum_sq += x * x;
    }
    const float s = rms_scale(sum_sq, p.dim, p.eps);
    for (int i = 0; i < p.dim; ++i)
      store_act(
          p.out, base + i,
          rms_out(load_act(p.x, base + i, p.dtype), s, load_act(p.weight, i, p.dtype), p.dtype),
          p.dtype);
  }
}

inline void rope_split_host(const RopeSplitProblem& p) {
  float scratch[kRopeMaxHeadDim];
  const int heads = p.q_heads + 2 * p.kv_heads, hd = p.head_dim;
  for (int r = 0; r < p.rows; ++r) {
    const float* cos = p.cos + size_t(r) * hd;
    const float* sin = p.sin + size_t(r) * hd;
    for (int h = 0; h < heads; ++h) {
      const size_t src = (size_t(r) * heads + h) * hd;
      if (h < p.q_heads) {
        rope_head(p, p.qkv, src, p.q_norm, true, cos, sin, p.q, (size_t(r) * p.q_heads + h) * hd,
                  scratch);
      } else if (h < p.q_heads + p.kv_heads) {
        rope_head(p, p.qkv, src, p.k_norm, true, cos, sin, p.k,
                  (size_t(r) * p.kv_heads + (h - p.q_heads)) * hd, scratch);
      } else {
        rope_head(p, p.qkv, src, nullptr, false, cos, sin, p.v,
                  (size_t(r) * p.kv_heads + (h - p.q_heads - p.kv_heads)) * hd, scratch);
      }
    }
  }
}

inline void silu_mul_host(const SiluMulProblem& p) {
  for (int r = 0; r < p.rows; ++r)
    for (int i = 0; i < p.dim; ++i) {
      const size_t in = size_t(r) * 2 * p.dim + i;
      store_act(p.out, size_t(r) * p.dim + i,
                silu_mul_out(load_act(p.gate_up, in, p.dtype),
                             load_act(p.gate_up, in + p.dim, p.dtype), p.dtype),
                p.dtype);
    }
}

}  // namespace kvbench::kernels
