// Per-head projections of a decode step's rows, several in one launch: for each job,
//   out[r, h, :] = x[r, h, :] . basis[h / (heads / basis_heads)]      (fp32 sums, one rounding)
// kvproj's cache on the GPU path (LatentPagedCache) needs four per layer and step: the query
// into the latent space (each query head through its KV head's key rows), the key and value
// coefficients (each KV head group through its bases) and the latent output back to head_dim.
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
};

constexpr int kHeadProjectMaxJobs = 3;
constexpr int kHeadProjectMaxIn = 256;   // in_dim: head_dim or a latent width
constexpr int kHeadProjectRowTile = 16;  // rows per block: a decode step's batch at most once

struct HeadProjectProblem {
  int rows = 0, jobs = 0;  // every job has `rows` rows
  HeadProjectJob job[kHeadProjectMaxJobs];
};

// Why a problem cannot run ("" when it can).
inline const char* head_project_check(const HeadProjectProblem& p) {
  if (p.rows < 0 || p.jobs < 1 || p.jobs > kHeadProjectMaxJobs)
    return "head_project: rows >= 0 and 1 to 3 jobs expected";
  for (int j = 0; j < p.jobs; ++j) {
    const HeadProjectJob& a = p.job[j];
    if (a.heads < 1 || a.basis_heads < 1 || a.heads % a.basis_heads != 0)
      return "head_project: heads must be a positive multiple of basis_heads";
    if (a.in_dim < 1 || a.in_dim > kHeadProjectMaxIn || a.out_dim < 1)
      return "head_project: in_dim must be 1 to 256 and out_dim positive";
    if (!a.x || !a.basis || !a.out) return "head_project: x, basis and out are required";
    if (a.out == a.x) return "head_project: out may not alias x";
  }
  return "";
}

// Output column c of head h, row r of job a: the sum over x's channels, in order.
KVB_HD float head_project_sum(const HeadProjectJob& a, int r, int h, int c) {
  const float* b = a.basis + size_t(h / (a.heads / a.basis_heads)) * a.in_dim * a.out_dim + c;
  const size_t x0 = (size_t(r) * a.heads + h) * a.in_dim;
  float acc = 0.f;
  for (int k = 0; k < a.in_dim; ++k)
    acc = fmaf(load_act(a.x, x0 + k, a.x_dtype), b[size_t(k) * a.out_dim], acc);
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
