#include "steady_evict_device.h"
#include "steady_evict_launcher.h"

namespace kvbench::kernels {
namespace {

namespace sd = steady_device;

__global__ void __launch_bounds__(sd::kThreads) steady_evict_kernel(SteadyEvictProblem p) {
  sd::evict_body(p);
}

}  // namespace

cudaError_t steady_evict(const SteadyEvictProblem& problem, cudaStream_t stream) {
  if (steady_evict_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid(problem.records, problem.kv_heads / steady_heads_per_block(problem));
  steady_evict_kernel<<<grid, sd::kThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
