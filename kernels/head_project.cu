#include "head_project_device.h"
#include "head_project_launcher.h"

namespace kvbench::kernels {
namespace {

namespace hd = head_project_device;

__global__ void head_project_kernel(HeadProjectProblem p) { hd::project_body(p); }

}  // namespace

cudaError_t head_project(const HeadProjectProblem& problem, cudaStream_t stream) {
  if (head_project_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  int heads = 0;
  for (int j = 0; j < problem.jobs; ++j) heads = max(heads, problem.job[j].heads);
  const dim3 grid(heads, (problem.rows + hd::kTile - 1) / hd::kTile, problem.jobs);
  head_project_kernel<<<grid, hd::kThreads, hd::smem_bytes(problem), stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
