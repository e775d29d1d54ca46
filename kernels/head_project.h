// Per-head projections of a decode step's rows, several in one launch: for each job,
//   out[r, h, :] = x[r, h, :] . basis[h / (heads / basis_heads)]      (fp32 sums, one rounding)
// kvproj's cache on the GPU path (LatentPagedCache) needs four per layer and step: the query
// into the latent space (each query head through its KV head's key rows), the key and value
// coefficients (each KV head group through its bases) and the latent output back to head_dim.
// Palu's (PaluPagedCache) needs two: its keys' latents, of each key rotated back to before RoPE
// (a job's optional inverse rotation), and its values'.
// As batched matmuls each was a cast to fp32, a permute copy, a bmm and a copy back, about 35
// operator launches per layer: on a GPU, host time comparable to the layer's device time
// (docs/perf-notes.md). As jobs of this kernel they are two launches (q, k, v together; the
// output after the attention), reading x in the activation dtype and writing the dtype the
// next step takes.
//
// Each output sums the channels in order with fmaf, so the CUDA kernel and head_project_host
// give the same bits. Torch-free; CUDA-free unless compiled by nvcc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "model_ops.h"  // ActDtype, load_act, store_act

namespace kvbench::kernels {

struct HeadProjectJob {
  int heads = 0, basis_heads = 0, in_dim = 0, out_dim = 0;  // heads % basis_heads == 0
  ActDtype x_dtype = ActDtype::kF32, out_dtype = ActDtype::kF32;
  const void* x = nullptr;       // [rows, heads, in_dim], contiguous
  const float* basis = nullptr;  // [basis_heads, in_dim, out_dim], contiguous
  void* out = nullptr;           // [rows, heads, out_dim], contiguous; may not alias x
  // Optional, before the projection: each rope_dim-wide segment of a row (a head of a group)
  // rotated back from its row's RoPE position (rotate_half layout): x * cos - rotate_half(x) *
  // sin, i.e. apply_rope with -sin (model/rope.h).
  const float* rope_cos = nullptr;     // [positions, rope_dim] fp32 (both halves), or null
  const float* rope_sin = nullptr;     // [positions, rope_dim] fp32
  const int64_t* positions = nullptr;  // [rows], each < the tables' positions
  int rope_dim = 0;                    // even, divides in_dim
};

constexpr int kHeadProjectMaxJobs = 3;
constexpr int kHeadProjectMaxIn = 512;   // in_dim: (a group of) head_dim or a latent width
constexpr int kHeadProjectRowTile = 16;  // rows per block: a decode step's batch at most once

struct HeadProjectProblem {
  int rows = 0, jobs = 0;  // every job has `rows` rows
  HeadProjectJob job[kHeadProjectMaxJobs];
};

// Why a problem cannot run ("" when it can).
inline const char* head_project_check(const HeadProjectProblem& p) {
  if (p.rows < 0 || p.jobs < 1 || p.jobs > kHeadProjectMaxJobs)
    return "head_project: rows >= 0 and 1 to 3 jobs expected";
  // Blocks of 16 rows along a grid's y.
  if (p.rows > kHeadProjectRowTile * 65535) return "head_project: at most 1048560 rows";
  for (int j = 0; j < p.jobs; ++j) {
    const HeadProjectJob& a = p.job[j];
    if (a.heads < 1 || a.basis_heads < 1 || a.heads % a.basis_heads != 0)
      return "head_project: heads must be a positive multiple of basis_heads";
    if (a.in_dim < 1 || a.in_dim > kHeadProjectMaxIn || a.out_dim < 1)
      return "head_project: in_dim must be 1 to 512 and out_dim positive";
    if (!a.x || !a.basis || !a.out) return "head_project: x, basis and out are required";
    if (a.out == a.x) return "head_project: out may not alias x";
    // A rotation is cos, sin and positions together: a half-given one would be skipped.
    if (!a.rope_cos != !a.rope_sin || !a.rope_cos != !a.positions)
      return "head_project: rope_cos, rope_sin and positions go together";
    if (a.rope_cos && (a.rope_dim < 2 || a.rope_dim % 2 != 0 || a.in_dim % a.rope_dim != 0))
      return "head_project: a rotation needs an even rope_dim dividing in_dim";
  }
  return "";
}

// Input channel k of head h, row r of job a: x's value, rotated back when the job says so.
KVB_HD float head_project_in(const HeadProjectJob& a, int r, int h, int k) {
  const size_t x0 = (size_t(r) * a.heads + h) * a.in_dim;
  const float x = load_act(a.x, x0 + k, a.x_dtype);
  if (!a.rope_cos) return x;
  const int d = a.rope_dim, half = d / 2, i = k % d, seg = k - i;
  const float other = load_act(a.x, x0 + seg + (i < half ? i + half : i - half), a.x_dtype);
  const size_t t = size_t(a.positions[r]) * d + i;
  // x cos + rotate_half(x) (-sin), rotate_half(x)_i = -x_{i+half} (i < half), x_{i-half} (else)
  return fmaf(x, a.rope_cos[t], encode::mul_rn(i < half ? other : -other, a.rope_sin[t]));
}

// Output column c of head h, row r of job a: the sum over the channels, in order.
KVB_HD float head_project_sum(const HeadProjectJob& a, int r, int h, int c) {
  const float* b = a.basis + size_t(h / (a.heads / a.basis_heads)) * a.in_dim * a.out_dim + c;
  float acc = 0.f;
  for (int k = 0; k < a.in_dim; ++k)
    acc = fmaf(head_project_in(a, r, h, k), b[size_t(k) * a.out_dim], acc);
  return acc;
}

// The reference: every job, row, head and column in turn.
inline void head_project_host(const HeadProjectProblem& p) {
  for (int j = 0; j < p.jobs; ++j) {
    const HeadProjectJob& a = p.job[j];
    for (int r = 0; r < p.rows; ++r)
      for (int h = 0; h < a.heads; ++h)
        for (int c = 0; c < a.out_dim; ++c)
          store_act(a.out, (size_t(r) * a.heads + h) * a.out_dim + c, head_project_sum(a, r, h, c),
                    a.out_dtype);
  }
}

}  // namespace kvbench::kernels
