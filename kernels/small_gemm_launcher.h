// Launches small_gemm.h's multiply: a block of 8 warps per 16 or 32 output columns, the warps
// splitting `in` between them (chunk c of 32 to warp c % 8) and summing through shared memory
// in a fixed order. All pointers are device pointers; a problem small_gemm_check() rejects
// returns cudaErrorInvalidValue.
#pragma once

#include <cuda_runtime_api.h>

#include "small_gemm.h"

namespace kvbench::kernels {

cudaError_t small_gemm(const SmallGemmProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
