#include "head_project_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kTile = kHeadProjectRowTile;

// Block (h, tile, j): head h of job j for rows [16 tile, 16 tile + 16). The same sums as
// head_project_sum(), channel by channel with fmaf, so the bits match the host reference.
__global__ void head_project_kernel(HeadProjectProblem p) {
  const HeadProjectJob& a = p.job[blockIdx.z];
  const int h = blockIdx.x, r0 = blockIdx.y * kTile;
  if (h >= a.heads) return;      // the grid spans the job with the most heads
  extern __shared__ float xs[];  // [kTile][in_dim]: the launch sizes it for the widest job
  for (int i = threadIdx.x; i < kTile * a.in_dim; i += kThreads) {
    const int r = i / a.in_dim, k = i % a.in_dim;
    xs[r * a.in_dim + k] = r0 + r < p.rows ? head_project_in(a, r0 + r, h, k) : 0.f;
  }
  __syncthreads();
  const float* basis = a.basis + size_t(h / (a.heads / a.basis_heads)) * a.in_dim * a.out_dim;
  const int live = min(kTile, p.rows - r0);
  for (int c = threadIdx.x; c < a.out_dim; c += kThreads) {
    float acc[kTile];
#pragma unroll
    for (int r = 0; r < kTile; ++r) acc[r] = 0.f;
#pragma unroll 4
    for (int k = 0; k < a.in_dim; ++k) {
      const float b = __ldg(basis + size_t(k) * a.out_dim + c);
#pragma unroll
      for (int r = 0; r < kTile; ++r) acc[r] = fmaf(xs[r * a.in_dim + k], b, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < kTile; ++r)
      if (r < live)
        store_act(a.out, (size_t(r0 + r) * a.heads + h) * a.out_dim + c, acc[r], a.out_dtype);
  }
}

}  // namespace

cudaError_t head_project(const HeadProjectProblem& problem, cudaStream_t stream) {
  if (head_project_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  if (problem.rows == 0) return cudaSuccess;
  int heads = 0, in = 0;
  for (int j = 0; j < problem.jobs; ++j)
    heads = max(heads, problem.job[j].heads), in = max(in, problem.job[j].in_dim);
  const dim3 grid(heads, (problem.rows + kTile - 1) / kTile, problem.jobs);
  head_project_kernel<<<grid, kThreads, kTile * in * sizeof(float), stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
