#include "retained_decode_device.h"
#include "retained_decode_launcher.h"

#include <cstdint>

#include "dispatch.h"

namespace kvbench::kernels {
namespace {

// retained_decode_multi<U, F, head_dim / 32> for the store's format at head_dim 64 or 128
// (KVB_DISPATCH_HEAD_DIM: the shapes pages are appended at); false, launching nothing, for
// another head_dim.
template <int U>
bool launch_multi(const RetainedProblem& pr, const PagedKvStore& s, cudaStream_t stream) {
  const dim3 grid(pr.batch * pr.q_heads), block(32 * retained_device::kWarps);
  bool launched = false;
  KVB_DISPATCH_FORMAT(s.format, F, KVB_DISPATCH_HEAD_DIM(pr.head_dim, D, {
                        retained_device::retained_decode_multi<U, F, D / 32>
                            <<<grid, block, 0, stream>>>(pr, s);
                        launched = true;
                      }))
  return launched;
}

}  // namespace

cudaError_t retained_decode(const RetainedProblem& problem, const PagedKvStore& store,
                            cudaStream_t stream) {
  if (retained_check(problem, store)[0] != '\0') return cudaErrorInvalidValue;
  // Another head_dim than 64 or 128, or a format the dispatch does not know: the one-token loop.
  const bool multi = (problem.tokens_per_step == 4 && launch_multi<4>(problem, store, stream)) ||
                     (problem.tokens_per_step == 2 && launch_multi<2>(problem, store, stream));
  if (!multi)
    retained_device::retained_decode_kernel<<<problem.batch * problem.q_heads,
                                              32 * retained_device::kWarps, 0, stream>>>(problem,
                                                                                         store);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
