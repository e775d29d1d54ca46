// The CUDA launchers of the transformer's fused per-row work (model_ops.h). All pointers are
// device pointers; each call is one launch on `stream` and returns its error (a problem
// model_ops_check() rejects: cudaErrorInvalidValue).
//   rms_norm    one block of 256 threads per row (a strided pass, a block reduction, a pass)
//   rope_split  one warp per (row, head): the head row staged in shared memory
//   silu_mul    one thread per output element, grid-stride
#pragma once

#include <cuda_runtime_api.h>

#include "model_ops.h"

namespace kvbench::kernels {

cudaError_t rms_norm(const RmsNormProblem& problem, cudaStream_t stream);
cudaError_t rope_split(const RopeSplitProblem& problem, cudaStream_t stream);
cudaError_t silu_mul(const SiluMulProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
