// Random jobs of the per-head projection kernel (kernels/head_project.h), shared by the CUDA
// kernel's test (tests/gpu/head_project_test.cpp) and its emulation on the CPU
// (tests/unit/head_project_emulation_test.cpp): kvproj's four jobs at Llama-3-8B's attention
// shape (32 query heads, 8 KV heads, head_dim 128, rank 64), a grouped basis (two KV heads per
// group), three jobs in one launch, more output columns than a block's threads, widths that
// leave the channel loop's unrolling a remainder, every activation dtype in and out; Palu's
// keys rotated back from RoPE before their projection. Host arrays.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "head_project.h"

namespace kvbench::gpu_test {

inline size_t act_bytes(kernels::ActDtype t) { return t == kernels::ActDtype::kF32 ? 4 : 2; }

// One job's host data: x in its dtype (random values rounded to it), an fp32 basis, the
// reference's output (`want`) and a poisoned one for the kernel (`got`: NaN in every dtype).
struct JobData {
  kernels::HeadProjectJob job;
  std::vector<uint8_t> x, want, got;
  std::vector<float> basis;
  std::vector<float> cos, sin;  // a rotation back from RoPE (job.rope_dim > 0)
  std::vector<int64_t> positions;
};

// Rotates `d`'s rows back from RoPE at random positions below 4096 first (Palu's keys).
inline void add_rotation(JobData& d, int rows, int rope_dim, std::mt19937& rng) {
  const int positions = 4096;
  for (int t = 0; t < positions; ++t)
    for (int i = 0; i < rope_dim; ++i) {
      const double angle = t * std::pow(10000.0, -2.0 * (i % (rope_dim / 2)) / rope_dim);
      d.cos.push_back(float(std::cos(angle))), d.sin.push_back(float(std::sin(angle)));
    }
  std::uniform_int_distribution<int64_t> pos(0, positions - 1);
  for (int r = 0; r < rows; ++r) d.positions.push_back(pos(rng));
  d.job.rope_dim = rope_dim;
}

inline JobData make_job(int rows, int heads, int basis_heads, int in, int out, kernels::ActDtype xt,
                        kernels::ActDtype ot, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  JobData d;
  d.job.heads = heads, d.job.basis_heads = basis_heads, d.job.in_dim = in, d.job.out_dim = out;
  d.job.x_dtype = xt, d.job.out_dtype = ot;
  d.x.resize(size_t(rows) * heads * in * act_bytes(xt));
  for (size_t i = 0; i < size_t(rows) * heads * in; ++i)
    kernels::store_act(d.x.data(), i, normal(rng), xt);
  for (size_t i = 0; i < size_t(basis_heads) * in * out; ++i) d.basis.push_back(normal(rng) * 0.1f);
  d.want.assign(size_t(rows) * heads * out * act_bytes(ot), 0);
  d.got.assign(d.want.size(), 0xff);
  return d;
}

// The launches of one row count and dtype: q, k (groups of two KV heads) and v in one; the
// output back to head_dim; a wide one; odd widths with fp32 activations into bf16.
inline std::vector<std::vector<JobData>> projection_sets(int rows, kernels::ActDtype t) {
  using kernels::ActDtype;
  std::mt19937 rng(uint32_t(rows * 7 + int(t)));
  std::vector<std::vector<JobData>> sets(4);
  sets[0].push_back(make_job(rows, 32, 8, 128, 64, t, t, rng));
  sets[0].push_back(make_job(rows, 4, 4, 256, 128, t, ActDtype::kF16, rng));
  sets[0].push_back(make_job(rows, 8, 8, 128, 64, t, ActDtype::kF32, rng));
  sets[1].push_back(make_job(rows, 32, 8, 64, 128, t, t, rng));
  sets[2].push_back(make_job(rows, 2, 1, 256, 200, t, t, rng));  // columns past 128 threads
  sets[3].push_back(make_job(rows, 4, 2, 90, 48, t, t, rng));
  sets[3].push_back(make_job(rows, 2, 2, 33, 20, ActDtype::kF32, ActDtype::kBf16, rng));
  return sets;
}

// Palu's key and value latents: keys rotated back from RoPE first, one latent per KV head
// (rank 90 in rows of 96) and per group of four heads (512 channels in); fp32 keys (Palu takes
// fp32 activations) into 16-bit latents too.
inline std::vector<JobData> rotation_set(int rows, kernels::ActDtype t) {
  using kernels::ActDtype;
  std::mt19937 rng(uint32_t(rows * 11 + int(t)));
  const ActDtype o = t == ActDtype::kF32 ? ActDtype::kF16 : t;
  std::vector<JobData> jobs;
  jobs.push_back(make_job(rows, 8, 8, 128, 96, t, o, rng));
  add_rotation(jobs.back(), rows, 128, rng);
  jobs.push_back(make_job(rows, 8, 8, 128, 96, t, o, rng));
  jobs.push_back(make_job(rows, 2, 2, 512, 128, t, o, rng));
  add_rotation(jobs.back(), rows, 128, rng);
  return jobs;
}

// The problem over the host arrays, into each job's `want` (or `got`).
inline kernels::HeadProjectProblem host_problem(int rows, std::vector<JobData>& jobs, bool got) {
  kernels::HeadProjectProblem p;
  p.rows = rows, p.jobs = int(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    kernels::HeadProjectJob& a = p.job[j];
    a = jobs[j].job;
    a.x = jobs[j].x.data(), a.basis = jobs[j].basis.data();
    a.out = got ? jobs[j].got.data() : jobs[j].want.data();
    if (a.rope_dim > 0)
      a.rope_cos = jobs[j].cos.data(), a.rope_sin = jobs[j].sin.data(),
      a.positions = jobs[j].positions.data();
  }
  return p;
}

}  // namespace kvbench::gpu_test
