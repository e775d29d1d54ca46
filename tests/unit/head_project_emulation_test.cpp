// The per-head projection kernel's own device code (kernels/head_project_device.h: a tile of
// rows staged in dynamic shared memory, rotated back from RoPE where a job says so, then each
// thread's output columns summed over the channels) runs on the CPU with emulated blocks and
// barriers (tests/unit/cuda_emulation.h), at the launcher's geometry and shared-memory size,
// on the GPU test's jobs (tests/gpu/head_project_case.h) at 1, 16 (a full tile) and 17 rows,
// outputs poisoned first: bit for bit the host reference's (both sum the channels in order
// with fmaf).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "head_project_case.h"

#include "cuda_emulation.h"  // last before the device header
#include "head_project_device.h"

namespace kvbench::gpu_test {
namespace {

namespace hd = kernels::head_project_device;

// kernels::head_project's launch, emulated: the grid spans the job with the most heads.
void run_emulated(const kernels::HeadProjectProblem& p) {
  unsigned heads = 0;
  for (int j = 0; j < p.jobs; ++j) heads = std::max(heads, unsigned(p.job[j].heads));
  const unsigned tiles = unsigned(p.rows + hd::kTile - 1) / hd::kTile;
  launch_emulated(
      EmulatedIndex{heads, tiles, unsigned(p.jobs)}, hd::kThreads, [&] { hd::project_body(p); },
      hd::smem_bytes(p));
}

void expect_bitwise(int rows, std::vector<JobData>& jobs) {
  kernels::head_project_host(host_problem(rows, jobs, false));
  run_emulated(host_problem(rows, jobs, true));
  for (size_t j = 0; j < jobs.size(); ++j)
    for (size_t i = 0; i < jobs[j].got.size(); ++i)
      ASSERT_EQ(jobs[j].got[i], jobs[j].want[i]) << "job " << j << ", byte " << i;
}

TEST(HeadProjectEmulationTest, MatchesTheHostReferenceBitForBit) {
  using kernels::ActDtype;
  for (int rows : {1, 16, 17})
    for (ActDtype t : {ActDtype::kF16, ActDtype::kBf16, ActDtype::kF32}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + ", dtype " + std::to_string(int(t)));
      for (std::vector<JobData>& jobs : projection_sets(rows, t))
        ASSERT_NO_FATAL_FAILURE(expect_bitwise(rows, jobs));
      std::vector<JobData> rotated = rotation_set(rows, t);
      ASSERT_NO_FATAL_FAILURE(expect_bitwise(rows, rotated));
    }
}

}  // namespace
}  // namespace kvbench::gpu_test
