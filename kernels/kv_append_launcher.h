// The CUDA launcher of quantize-on-append (kv_append.h): every unit of a phase gets a thread,
// grid [units / 128, kv_heads, batch], the two phases as two launches on `stream`. All
// pointers of the problem and the store are device pointers.
#pragma once

#include <cuda_runtime_api.h>

#include "kv_append.h"

namespace kvbench::kernels {

cudaError_t append_kv(const AppendProblem& problem, const PagedKvStore& store, cudaStream_t stream);

// The reason the last append_kv() rejected its input ("" when it did not).
const char* append_last_error();

}  // namespace kvbench::kernels
