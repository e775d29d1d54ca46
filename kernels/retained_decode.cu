#include "retained_decode_device.h"
#include "retained_decode_launcher.h"

namespace kvbench::kernels {

cudaError_t retained_decode(const RetainedProblem& problem, const PagedKvStore& store,
                            cudaStream_t stream) {
  if (retained_check(problem, store)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid(problem.batch * problem.q_heads), block(32 * retained_device::kWarps);
  retained_device::with_loop(problem, store, [&](auto u, auto f, auto per) {
    if constexpr (decltype(u)::value == 0)
      retained_device::retained_decode_kernel<<<grid, block, 0, stream>>>(problem, store);
    else
      retained_device::retained_decode_multi<decltype(u)::value, decltype(f)::value,
                                             decltype(per)::value>
          <<<grid, block, 0, stream>>>(problem, store);
  });
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
