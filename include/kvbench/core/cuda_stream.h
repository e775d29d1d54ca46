// The CUDA stream kvbench's own kernels launch on: torch's current stream on the tensor's
// device, so that a kernel is ordered after the torch ops that wrote its inputs and before
// the ones that read its outputs, whatever stream a caller made current (a pool stream, a
// stream under CUDA-graph capture). Kept as an opaque handle so that this header needs no
// CUDA headers.
#pragma once

#include <ATen/ATen.h>

namespace kvbench {

// torch's current CUDA stream on `device` as a cudaStream_t; nullptr (the legacy default
// stream, which is torch's own default) where this libtorch has no CUDA or `device` is not a
// GPU.
void* current_cuda_stream(const at::Device& device);

// Whether current_cuda_stream can name a stream other than the default (a libtorch with CUDA).
bool follows_torch_streams();

}  // namespace kvbench
