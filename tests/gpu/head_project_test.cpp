// The per-head projection kernel (kernels/head_project.cu) against its host reference
// (head_project.h, checked against float64 by tests/unit/head_project_test.cpp): kvproj's four
// jobs at Llama-3-8B's attention shape (32 query heads, 8 KV heads, head_dim 128, rank 64),
// a grouped basis (two KV heads per group), three jobs in one launch, row counts below, at and
// past a block's tile of 16, every activation dtype in and out, outputs poisoned with NaN
// first; Palu's keys rotated back from RoPE before their projection. Both sum the channels in
// order with fmaf (the rotation: one rounded product and an fmaf), so the outputs must match
// bit for bit.
// Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "device_buffer.h"
#include "head_project_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

size_t act_bytes(kernels::ActDtype t) { return t == kernels::ActDtype::kF32 ? 4 : 2; }

// One job's host data: x in its dtype (random values rounded to it), an fp32 basis.
struct JobData {
  kernels::HeadProjectJob job;
  std::vector<uint8_t> x, want, got;
  std::vector<float> basis;
  std::vector<float> cos, sin;  // a rotation back from RoPE (job.rope_dim > 0)
  std::vector<int64_t> positions;
};

// Rotates `d`'s rows back from RoPE at random positions below 4096 first (Palu's keys).
void add_rotation(JobData& d, int rows, int rope_dim, std::mt19937& rng) {
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

JobData make_job(int rows, int heads, int basis_heads, int in, int out, kernels::ActDtype xt,
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
  d.got.assign(d.want.size(), 0xff);  // NaN in every dtype
  return d;
}

void run_case(int rows, std::vector<JobData>& jobs) {
  kernels::HeadProjectProblem host, dev;
  host.rows = dev.rows = rows;
  host.jobs = dev.jobs = int(jobs.size());
  std::vector<DeviceBuffer> x(jobs.size()), basis(jobs.size()), out(jobs.size());
  std::vector<DeviceBuffer> cos(jobs.size()), sin(jobs.size()), positions(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    host.job[j] = dev.job[j] = jobs[j].job;
    host.job[j].x = jobs[j].x.data(), host.job[j].basis = jobs[j].basis.data();
    host.job[j].out = jobs[j].want.data();
    ASSERT_CUDA(x[j].upload(jobs[j].x));
    ASSERT_CUDA(basis[j].upload(jobs[j].basis));
    ASSERT_CUDA(out[j].upload(jobs[j].got));
    dev.job[j].x = x[j].ptr, dev.job[j].basis = static_cast<const float*>(basis[j].ptr);
    dev.job[j].out = out[j].ptr;
    if (jobs[j].job.rope_dim > 0) {
      host.job[j].rope_cos = jobs[j].cos.data(), host.job[j].rope_sin = jobs[j].sin.data();
      host.job[j].positions = jobs[j].positions.data();
      ASSERT_CUDA(cos[j].upload(jobs[j].cos));
      ASSERT_CUDA(sin[j].upload(jobs[j].sin));
      ASSERT_CUDA(positions[j].upload(jobs[j].positions));
      dev.job[j].rope_cos = static_cast<const float*>(cos[j].ptr);
      dev.job[j].rope_sin = static_cast<const float*>(sin[j].ptr);
      dev.job[j].positions = static_cast<const int64_t*>(positions[j].ptr);
    }
  }
  kernels::head_project_host(host);
  ASSERT_CUDA(kernels::head_project(dev, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  for (size_t j = 0; j < jobs.size(); ++j) {
    ASSERT_CUDA(out[j].download(jobs[j].got));
    for (size_t i = 0; i < jobs[j].got.size(); ++i)
      ASSERT_EQ(jobs[j].got[i], jobs[j].want[i]) << "job " << j << ", byte " << i;
  }
}

TEST(HeadProjectGpuTest, MatchesTheHostReferenceBitForBit) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  using kernels::ActDtype;
  for (int rows : {1, 16, 17, 45}) {
    for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16, ActDtype::kF32}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + ", dtype " + std::to_string(int(t)));
      std::mt19937 rng(rows * 7 + int(t));
      // q, k (groups of two KV heads), v in one launch; then the output, back to head_dim.
      std::vector<JobData> in;
      in.push_back(make_job(rows, 32, 8, 128, 64, t, t, rng));
      in.push_back(make_job(rows, 4, 4, 256, 128, t, ActDtype::kF16, rng));
      in.push_back(make_job(rows, 8, 8, 128, 64, t, ActDtype::kF32, rng));
      ASSERT_NO_FATAL_FAILURE(run_case(rows, in));
      std::vector<JobData> back;
      back.push_back(make_job(rows, 32, 8, 64, 128, t, t, rng));
      ASSERT_NO_FATAL_FAILURE(run_case(rows, back));
      std::vector<JobData> wide;  // more output columns than a block has threads
      wide.push_back(make_job(rows, 2, 1, 256, 200, t, t, rng));
      ASSERT_NO_FATAL_FAILURE(run_case(rows, wide));
      // Widths that leave the channel loop's unrolling a remainder (the engine pads its own),
      // and fp32 activations into a bf16 output.
      std::vector<JobData> odd;
      odd.push_back(make_job(rows, 4, 2, 90, 48, t, t, rng));
      odd.push_back(make_job(rows, 2, 2, 33, 20, ActDtype::kF32, ActDtype::kBf16, rng));
      ASSERT_NO_FATAL_FAILURE(run_case(rows, odd));
    }
  }
}

// Palu's key and value latents: keys rotated back from RoPE first, one latent per KV head
// (rank 90 in rows of 96) and per group of four heads (512 channels in).
TEST(HeadProjectGpuTest, RotatesBackLikeTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  using kernels::ActDtype;
  for (int rows : {1, 17}) {
    for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16, ActDtype::kF32}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + ", dtype " + std::to_string(int(t)));
      std::mt19937 rng(rows * 11 + int(t));
      // fp32 keys (Palu takes fp32 activations) into 16-bit latents too.
      const ActDtype o = t == ActDtype::kF32 ? ActDtype::kF16 : t;
      std::vector<JobData> jobs;
      jobs.push_back(make_job(rows, 8, 8, 128, 96, t, o, rng));
      add_rotation(jobs.back(), rows, 128, rng);
      jobs.push_back(make_job(rows, 8, 8, 128, 96, t, o, rng));
      jobs.push_back(make_job(rows, 2, 2, 512, 128, t, o, rng));
      add_rotation(jobs.back(), rows, 128, rng);
      ASSERT_NO_FATAL_FAILURE(run_case(rows, jobs));
    }
  }
}

TEST(HeadProjectGpuTest, RefusesWhatItCannotRun) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  DeviceBuffer buf;
  ASSERT_CUDA(buf.upload(std::vector<float>(1024, 1.f)));
  kernels::HeadProjectProblem p;
  p.rows = 1, p.jobs = 1;
  kernels::HeadProjectJob& a = p.job[0];
  a.heads = 6, a.basis_heads = 4, a.in_dim = 8, a.out_dim = 8;  // 4 does not divide 6
  a.x = buf.ptr, a.basis = static_cast<const float*>(buf.ptr),
  a.out = static_cast<float*>(buf.ptr) + 512;
  EXPECT_EQ(kernels::head_project(p, nullptr), cudaErrorInvalidValue);
  a.heads = 8, a.in_dim = 600;  // past 512
  EXPECT_EQ(kernels::head_project(p, nullptr), cudaErrorInvalidValue);
  a.in_dim = 8, a.rope_cos = static_cast<const float*>(buf.ptr), a.rope_dim = 8;  // no sin
  EXPECT_EQ(kernels::head_project(p, nullptr), cudaErrorInvalidValue);
  a.rope_cos = nullptr, p.rows = 16 * 65536;  // past the grid
  EXPECT_EQ(kernels::head_project(p, nullptr), cudaErrorInvalidValue);
  cudaGetLastError();
}

}  // namespace
}  // namespace kvbench::gpu_test
