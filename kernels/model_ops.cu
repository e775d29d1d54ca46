#include <algorithm>

#include "model_ops_device.h"
#include "model_ops_launcher.h"

namespace kvbench::kernels {
namespace {

namespace md = model_ops_device;

__global__ void rms_norm_kernel(RmsNormProblem p) { md::rms_norm_body(p); }
__global__ void rope_split_kernel(RopeSplitProblem p) { md::rope_split_body(p); }
__global__ void silu_mul_kernel(SiluMulProblem p) { md::silu_mul_body(p); }

}  // namespace

cudaError_t rms_norm(const RmsNormProblem& problem, cudaStream_t stream) {
  if (!model_ops_check(problem).empty() || problem.rows > int(0x7fffffff))
    return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  rms_norm_kernel<<<problem.rows, md::kNormThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

cudaError_t rope_split(const RopeSplitProblem& problem, cudaStream_t stream) {
  if (!model_ops_check(problem).empty()) return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  const int heads = problem.q_heads + 2 * problem.kv_heads;
  const dim3 grid(problem.rows, (heads + md::kRopeWarps - 1) / md::kRopeWarps);
  if (grid.y > md::kMaxBlocks) return cudaErrorInvalidValue;
  rope_split_kernel<<<grid, md::kRopeWarps * 32, 0, stream>>>(problem);
  return cudaGetLastError();
}

cudaError_t silu_mul(const SiluMulProblem& problem, cudaStream_t stream) {
  if (!model_ops_check(problem).empty()) return cudaErrorInvalidValue;
  const size_t total = size_t(problem.rows) * problem.dim;
  if (total == 0) return cudaSuccess;
  const size_t blocks =
      std::min<size_t>((total + md::kElementThreads - 1) / md::kElementThreads, 16384);
  silu_mul_kernel<<<unsigned(blocks), md::kElementThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
