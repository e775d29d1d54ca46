// The per-head projection kernel (kernels/head_project.cu) against its host reference
// (head_project.h, checked against float64 by tests/unit/head_project_test.cpp) on the jobs of
// tests/gpu/head_project_case.h, row counts below, at and past a block's tile of 16, outputs
// poisoned with NaN first. Both sum the channels in order with fmaf (the rotation: one rounded
// product and an fmaf), so the outputs must match bit for bit. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "device_buffer.h"
#include "head_project_case.h"
#include "head_project_launcher.h"

namespace kvbench::gpu_test {
namespace {

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

void run_case(int rows, std::vector<JobData>& jobs) {
  kernels::HeadProjectProblem dev = host_problem(rows, jobs, false);
  kernels::head_project_host(dev);  // into want; then the same jobs on the device
  std::vector<DeviceBuffer> x(jobs.size()), basis(jobs.size()), out(jobs.size());
  std::vector<DeviceBuffer> cos(jobs.size()), sin(jobs.size()), positions(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    ASSERT_CUDA(x[j].upload(jobs[j].x));
    ASSERT_CUDA(basis[j].upload(jobs[j].basis));
    ASSERT_CUDA(out[j].upload(jobs[j].got));
    dev.job[j].x = x[j].ptr, dev.job[j].basis = static_cast<const float*>(basis[j].ptr);
    dev.job[j].out = out[j].ptr;
    if (jobs[j].job.rope_dim > 0) {
      ASSERT_CUDA(cos[j].upload(jobs[j].cos));
      ASSERT_CUDA(sin[j].upload(jobs[j].sin));
      ASSERT_CUDA(positions[j].upload(jobs[j].positions));
      dev.job[j].rope_cos = static_cast<const float*>(cos[j].ptr);
      dev.job[j].rope_sin = static_cast<const float*>(sin[j].ptr);
      dev.job[j].positions = static_cast<const int64_t*>(positions[j].ptr);
    }
  }
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
  for (int rows : {1, 16, 17, 45})
    for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16, ActDtype::kF32}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + ", dtype " + std::to_string(int(t)));
      for (std::vector<JobData>& jobs : projection_sets(rows, t))
        ASSERT_NO_FATAL_FAILURE(run_case(rows, jobs));
    }
}

TEST(HeadProjectGpuTest, RotatesBackLikeTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  using kernels::ActDtype;
  for (int rows : {1, 17})
    for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16, ActDtype::kF32}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + ", dtype " + std::to_string(int(t)));
      std::vector<JobData> jobs = rotation_set(rows, t);
      ASSERT_NO_FATAL_FAILURE(run_case(rows, jobs));
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
