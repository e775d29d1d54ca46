// Launches head_project.h's jobs on the GPU, all in one launch: a block of 128 threads per
// (head, tile of 16 rows, job), the tile's x rows staged in shared memory (rotated back first where
// a job says so), each thread an output column with the tile's 16 sums in registers (the basis read
// once per block, in coalesced rows). All pointers are device pointers; a problem
// head_project_check() rejects, or more rows than the grid takes, returns cudaErrorInvalidValue.
#pragma once

#include <cuda_runtime_api.h>

#include "head_project.h"

namespace kvbench::kernels {

cudaError_t head_project(const HeadProjectProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
