#include "palu_decode_launcher.h"

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "palu_decode_device.h"

// The kernels' design and device code: palu_decode_device.h.

namespace kvbench::kernels {
namespace {

using namespace palu_device;

template <int D, int R, bool kBf16, bool kListed, bool kScores>
__global__ void __launch_bounds__(kThreads)
    palu_kernel(PaluProblem p, int tiles_per_split, int splits, float* ws) {
  palu_body<D, R, kBf16, kListed, kScores>(p, tiles_per_split, splits, ws);
}

// Merges the splits of (sequence, KV head) and projects: out = L_v (sum_s w_s O_s) / sum.
template <int D, int R>
__global__ void __launch_bounds__(kThreads)
    palu_combine(PaluProblem p, int splits, const float* ws) {
  combine_body<D, R>(p, splits, ws);
}

template <int D, int R, bool kBf16, bool kListed, bool kScores>
cudaError_t launch(const PaluProblem& p, const PaluPlan& plan, int tiles_per_split, float* ws,
                   cudaStream_t stream) {
  constexpr size_t kSmem = Smem<D, R>::kTotal;
  // More than 48 KB of dynamic shared memory needs an opt-in per device: asked once per device
  // (bit d of `configured`), not on every decode step.
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (!(configured.load(std::memory_order_relaxed) & bit)) {
    err = cudaFuncSetAttribute(palu_kernel<D, R, kBf16, kListed, kScores>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem));
    if (err != cudaSuccess) return err;
    configured.fetch_or(bit, std::memory_order_relaxed);
  }
  palu_kernel<D, R, kBf16, kListed, kScores>
      <<<dim3(plan.splits, p.kv_heads, p.batch), kThreads, kSmem, stream>>>(p, tiles_per_split,
                                                                            plan.splits, ws);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  palu_combine<D, R><<<dim3(p.kv_heads, p.batch), kThreads, 0, stream>>>(p, plan.splits, ws);
  return cudaGetLastError();
}

int tiles_of(int max_len) { return (max_len + kTile - 1) / kTile; }

}  // namespace

cudaError_t palu_plan(const PaluProblem& p, int max_len, int sm_count, PaluPlan* plan) {
  if (plan == nullptr || palu_check(p)[0] != '\0' || max_len < 1 || sm_count < 1 ||
      tiles_of(max_len) > p.rope_tiles)
    return cudaErrorInvalidValue;
  // About four blocks per SM in all, each with at least two tiles per warp.
  const int tiles = tiles_of(max_len), blocks = p.batch * p.kv_heads;
  const int wanted = std::max(1, (4 * sm_count + blocks - 1) / blocks);
  const int most = std::max(1, tiles / (2 * kWarps));
  const int per = (tiles + std::min(wanted, most) - 1) / std::min(wanted, most);
  plan->splits = (tiles + per - 1) / per;
  plan->tiles_per_split = per;
  plan->workspace_bytes =
      size_t(blocks) * plan->splits * kPaluMaxQPerKv * (p.rank + 2) * sizeof(float);
  return cudaSuccess;
}

cudaError_t palu_decode(const PaluProblem& p, const PaluPlan& plan, void* workspace,
                        cudaStream_t stream) {
  if (palu_check(p)[0] != '\0' || plan.splits < 1 || workspace == nullptr)
    return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  with_kernel(p, [&](auto d, auto r, auto bf16, auto listed, auto scored) {
    err = launch<decltype(d)::value, decltype(r)::value, decltype(bf16)::value,
                 decltype(listed)::value, decltype(scored)::value>(
        p, plan, plan.tiles_per_split, static_cast<float*>(workspace), stream);
  });
  return err;
}

}  // namespace kvbench::kernels
