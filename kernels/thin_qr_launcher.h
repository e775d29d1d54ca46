// Launches the batched thin QR (thin_qr.h) on the GPU: a block of kThinQrThreads per matrix.
// The problem's pointer is a device pointer.
#pragma once

#include <cuda_runtime_api.h>

#include "thin_qr.h"

namespace kvbench::kernels {

cudaError_t thin_qr(const ThinQrProblem& problem, cudaStream_t stream);

}  // namespace kvbench::kernels
