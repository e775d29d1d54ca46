#include "thin_qr_device.h"
#include "thin_qr_launcher.h"

namespace kvbench::kernels {
namespace {

namespace qd = thin_qr_device;

__global__ void __launch_bounds__(kThinQrThreads) thin_qr_kernel(ThinQrProblem p) {
  qd::qr_body(p);
}

}  // namespace

cudaError_t thin_qr(const ThinQrProblem& problem, cudaStream_t stream) {
  if (thin_qr_check(problem)[0] != '\0') return cudaErrorInvalidValue;
  thin_qr_kernel<<<problem.batch, kThinQrThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
