#include "gear_decode_launcher.h"

#include <algorithm>

#include "gear_decode_device.h"

// The kernels' design and device code: gear_decode_device.h.

namespace kvbench::kernels {
namespace {

using namespace gear_device;

template <int D>
__global__ void __launch_bounds__(kThreads)
    gear_split_kernel(const GearProblem p, int tokens_per_split, int splits, float* ws) {
  split_body<D>(p, tokens_per_split, splits, ws);
}

__global__ void gear_merge_kernel(const GearProblem p, int splits, const float* ws) {
  merge_body(p, splits, ws);
}

}  // namespace

cudaError_t gear_plan(const GearProblem& p, int max_len, int sm_count, GearPlan* plan) {
  if (plan == nullptr || gear_check(p)[0] != '\0' || max_len < 1 || sm_count < 1)
    return cudaErrorInvalidValue;
  // About four blocks per SM in all, each with at least four tiles.
  const int tiles = (max_len + kTile - 1) / kTile, blocks = p.batch * p.kv_heads;
  const int wanted = std::max(1, (4 * sm_count + blocks - 1) / blocks);
  const int splits = std::min(wanted, std::max(1, tiles / 4));
  const int per = (tiles + splits - 1) / splits;
  plan->tokens_per_split = per * kTile;
  plan->splits = (tiles + per - 1) / per;
  plan->workspace_bytes = size_t(p.batch) * p.q_heads * plan->splits * (p.head_dim + 2) * 4;
  return cudaSuccess;
}

cudaError_t gear_decode(const GearProblem& p, const GearPlan& plan, void* workspace,
                        cudaStream_t stream) {
  if (gear_check(p)[0] != '\0' || plan.splits < 1 || plan.tokens_per_split < 1 ||
      workspace == nullptr)
    return cudaErrorInvalidValue;
  float* ws = static_cast<float*>(workspace);
  const dim3 grid(plan.splits, p.kv_heads, p.batch);
  if (p.head_dim == 128) {
    gear_split_kernel<128>
        <<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  } else if (p.head_dim == 64) {
    gear_split_kernel<64><<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  } else {
    gear_split_kernel<0><<<grid, kThreads, 0, stream>>>(p, plan.tokens_per_split, plan.splits, ws);
  }
  // A failed split launch is said as itself, without a merge over an unwritten workspace.
  if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  gear_merge_kernel<<<dim3(p.q_heads, p.batch), p.head_dim, 0, stream>>>(p, plan.splits, ws);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
