// Launches a decode step's steady-state eviction at one layer (steady_evict.h) on the GPU: a
// block per (record, KV head), per record for TOVA. All pointers in the problem are device
// pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "steady_evict.h"

namespace kvbench::kernels {

cudaError_t steady_evict(const SteadyEvictProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
