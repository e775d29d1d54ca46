// Launches H2O's accumulated attention of a prefill block (summed_attention.h) on the GPU:
// the lse pass, then the column pass, both on `stream`. All pointers in the problem are
// device pointers, q and k 16-byte aligned; head_dim 64 or 128 (else cudaErrorInvalidValue).
#pragma once

#include <cuda_runtime_api.h>

#include "summed_attention.h"

namespace kvbench::kernels {

cudaError_t summed_attention(const SummedAttentionProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
