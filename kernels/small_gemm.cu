#include "small_gemm_device.h"
#include "small_gemm_launcher.h"

namespace kvbench::kernels {
namespace {

template <bool kBf16, int kRowTiles, int kColTiles>
__global__ void __launch_bounds__(small_gemm_device::kThreads)
    small_gemm_kernel(SmallGemmProblem p) {
  small_gemm_device::small_gemm_body<kBf16, kRowTiles, kColTiles>(p);
}

}  // namespace

cudaError_t small_gemm(const SmallGemmProblem& problem, cudaStream_t stream) {
  const bool ok = small_gemm_device::with_kernel(problem, [&](auto bf16, auto row_tiles,
                                                              auto col_tiles, int blocks) {
    small_gemm_kernel<decltype(bf16)::value, decltype(row_tiles)::value, decltype(col_tiles)::value>
        <<<blocks, small_gemm_device::kThreads, 0, stream>>>(problem);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace kvbench::kernels
