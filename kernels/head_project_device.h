// The device code of kernels/head_project.cu: the body of its one kernel. A header so that a
// CPU test runs exactly this code with emulated threads, barriers and dynamic shared memory
// (tests/unit/head_project_emulation_test.cpp, tests/unit/cuda_emulation.h): compiled by nvcc,
// or by a host compiler that defines KVB_KERNEL_EMULATED and the names the emulation gives.
#pragma once

#include "dynamic_smem.h"
#include "head_project.h"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "head_project_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::head_project_device {
// Internal to each file including it (the kernel's and the emulating test's).
namespace {

constexpr int kThreads = 128;
constexpr int kTile = kHeadProjectRowTile;

// Dynamic shared memory a launch needs: a tile of rows of the widest job's input.
inline size_t smem_bytes(const HeadProjectProblem& p) {
  int in = 0;
  for (int j = 0; j < p.jobs; ++j) in = in > p.job[j].in_dim ? in : p.job[j].in_dim;
  return size_t(kTile) * in * sizeof(float);
}

// Block (h, tile, j): head h of job j for rows [16 tile, 16 tile + 16). The same sums as
// head_project_sum(), channel by channel with fmaf, so the bits match the host reference.
// A block past its job's heads leaves whole, before the barrier.
__device__ __forceinline__ void project_body(const HeadProjectProblem& p) {
  const HeadProjectJob& a = p.job[blockIdx.z];
  const int h = blockIdx.x, r0 = blockIdx.y * kTile;
  if (h >= a.heads) return;  // the grid spans the job with the most heads
  KVB_DYNAMIC_SMEM(smem);    // [kTile][in_dim] floats: the launch sizes it for the widest job
  float* xs = reinterpret_cast<float*>(smem);
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
}  // namespace kvbench::kernels::head_project_device
