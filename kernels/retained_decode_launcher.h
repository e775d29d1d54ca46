// Launches retained-index decode attention (retained_decode.h) on the GPU: one block of four
// warps per (sequence, query head), each warp a strided slice of the head's kept tokens with
// its lanes over channels, the four partial softmaxes merged in shared memory. All pointers in
// the problem and store are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "retained_decode.h"

namespace kvbench::kernels {

cudaError_t retained_decode(const RetainedProblem& problem, const PagedKvStore& store,
                            cudaStream_t stream);

}  // namespace kvbench::kernels
