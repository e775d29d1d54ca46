// H2O's accumulated attention of a prefill block (summed_attention.h) in two passes over
// tensor-core scores, none of them written to memory.
//   1. lse: a block per (64 queries, head); each warp's 16 queries as the mma's A rows
//      against 64-key tiles as its B columns, a running maximum and sum per query, per lane,
//      merged across the four lanes of a row at the end: lse = max + log2(sum) (base 2).
//   2. columns: a block per (64 keys, KV head); each warp's 16 keys as A rows against the
//      group's query tiles as B columns, 2^(score - lse) summed per key in two registers
//      per lane (one per row), merged across the row's lanes at the end. Keys are the rows so
//      that a key's sum over queries stays in the lanes holding it, and every output element
//      is written once, by one lane: no atomics, the same order every run.
// Only the keys a query sees (summed_attention.h) enter either pass: a tile past every
// query's reach is skipped, a tile across the diagonal masked element by element.
// Split keys (k_lo set, kSplit): each score is a second product with the keys' remainders,
// added at 2^-11. Each block's own operand (queries, or keys and remainders) is read into
// registers first, so the two shared-memory tiles then stream what the pass multiplies.
#include "dispatch.h"
#include "summed_attention_device.h"
#include "summed_attention_launcher.h"

namespace kvbench::kernels {
namespace {

using namespace summed_device;

template <int D, bool kBf16, bool kSplit>
__global__ void __launch_bounds__(kThreads) lse_kernel(SummedAttentionProblem p) {
  lse_body<D, kBf16, kSplit>(p);
}

template <int D, bool kBf16, bool kSplit>
__global__ void __launch_bounds__(kThreads) column_kernel(SummedAttentionProblem p) {
  column_body<D, kBf16, kSplit>(p);
}

template <int D, bool kBf16, bool kSplit>
cudaError_t launch(const SummedAttentionProblem& p, cudaStream_t stream) {
  lse_kernel<D, kBf16, kSplit>
      <<<dim3((p.n + kTile - 1) / kTile, p.heads), kThreads, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  column_kernel<D, kBf16, kSplit>
      <<<dim3((p.held + kTile - 1) / kTile, p.kv_heads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t summed_attention(const SummedAttentionProblem& p, cudaStream_t stream) {
  if (summed_attention_check(p)[0] != '\0' || !summed_attention_gpu_shape(p.head_dim) ||
      (reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k) |
       reinterpret_cast<uintptr_t>(p.k_lo)) %
              16 !=
          0 ||
      p.heads > 65535 || p.kv_heads > 65535)
    return cudaErrorInvalidValue;
  cudaError_t err = cudaErrorInvalidValue;
  KVB_DISPATCH_HEAD_DIM(p.head_dim, D,
                        err = p.k_lo   ? launch<D, false, true>(p, stream)
                              : p.bf16 ? launch<D, true, false>(p, stream)
                                       : launch<D, false, false>(p, stream));
  return err;
}

}  // namespace kvbench::kernels
