// The CUDA launcher of quantize-on-append (kv_append.h): grid [append::blocks_x, kv_heads,
// batch] of append::kThreads threads (a thread per unit up to 1024 blocks, a grid-stride loop
// past them: append::run_thread), the two phases as two launches on `stream`. All pointers of
// the problem and the store are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "kv_append.h"

namespace kvbench::kernels {

cudaError_t append_kv(const AppendProblem& problem, const PagedKvStore& store, cudaStream_t stream);

// The reason the last append_kv() rejected its input ("" when it did not).
const char* append_last_error();

}  // namespace kvbench::kernels
