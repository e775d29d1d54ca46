#include "latent_decode_launcher.h"

#include "latent_decode_device.h"

// The kernel's design and device code: latent_decode_device.h.

namespace kvbench::kernels {

cudaError_t latent_decode(const LatentProblem& problem, void* workspace, cudaStream_t stream) {
  if (latent_check(problem)[0] != '\0' || workspace == nullptr) return cudaErrorInvalidValue;
  latent_device::
      latent_decode_kernel<<<problem.batch * problem.q_heads, latent_device::kThreads, 0, stream>>>(
          problem, static_cast<float*>(workspace));
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
