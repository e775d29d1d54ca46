#include "retained_decode_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = kRetainedMaxHeadDim / 32;

// Block = one (sequence, query head), four warps. Warp w attends the kept tokens w, w + 4, ...
// U at a time (tokens_per_step): it loads the U tokens' key and value channels first (its
// lanes decode a row's channels in slices, decode_paged_channels: the whole warp reads a row's
// bytes at once), so that U tokens' loads are in flight together, then reduces their dot
// products with shuffles and folds them into an online softmax over its lanes' channels, one
// rescale per U tokens. The four warps' partial softmaxes merge through shared memory. The
// same arithmetic as retained_partial(), in another summation order.
template <int U>
__global__ void retained_decode_kernel(RetainedProblem pr, PagedKvStore s) {
  __shared__ float part_max[kWarps], part_sum[kWarps], part_acc[kWarps][kRetainedMaxHeadDim];
  const int b = blockIdx.x / pr.q_heads, qh = blockIdx.x % pr.q_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int D = pr.head_dim, per = D / 32, d0 = lane * per;
  const RetainedHead r = retained_head(pr, b, qh);
  const int h = r.h, row = r.row, T = r.T;
  const float* q = r.q;
  float qv[kMaxPerLane], acc[kMaxPerLane];
  float xk[U][kMaxPerLane], xv[U][kMaxPerLane];
  for (int j = 0; j < per; ++j) qv[j] = q[d0 + j], acc[j] = 0.f;
  float m = -INFINITY, sum = 0.f;
  for (int i = warp; i < r.n; i += kWarps * U) {
    // Token u of this step is kept token i + u * kWarps; past r.n it is left out.
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int iu = i + u * kWarps;
      if (iu >= r.n) break;
      const int t = r.token(iu);
      decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/true, h, t, T, d0, d0 + per,
                            xk[u]);
      decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/false, h, t, T, d0, d0 + per,
                            xv[u]);
    }
    float score[U];
    float mn = m;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      score[u] = -INFINITY;
      if (i + u * kWarps >= r.n) continue;  // the same for every lane: no shuffle skipped apart
      float dot = 0.f;
      for (int j = 0; j < per; ++j) dot = fmaf(qv[j], xk[u][j], dot);
      for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      score[u] = dot * pr.softmax_scale;
      mn = fmaxf(mn, score[u]);
      if (pr.scores && lane == 0)
        pr.scores[(size_t(b) * pr.q_heads + qh) * pr.score_stride + i + u * kWarps] = score[u];
    }
    // Token i is kept, so mn is finite; expf(-inf) = 0 for the first step and left-out tokens.
    const float rescale = expf(m - mn);
    for (int j = 0; j < per; ++j) acc[j] *= rescale;
    sum *= rescale;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i + u * kWarps >= r.n) continue;
      const float w = expf(score[u] - mn);
      for (int j = 0; j < per; ++j) acc[j] = fmaf(w, xv[u][j], acc[j]);
      sum += w;
    }
    m = mn;
  }
  if (lane == 0) part_max[warp] = m, part_sum[warp] = sum;
  for (int j = 0; j < per; ++j) part_acc[warp][d0 + j] = acc[j];
  __syncthreads();
  if (warp != 0) return;
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, part_max[w]);
  float total = 0.f;  // a warp that saw no token has max -inf and sum 0: it adds nothing
  for (int w = 0; w < kWarps; ++w) total += part_sum[w] * expf(part_max[w] - mx);
  float* out = pr.out + (size_t(b) * pr.q_heads + qh) * D;
  for (int j = 0; j < per; ++j) {
    float a = 0.f;
    for (int w = 0; w < kWarps; ++w) a += part_acc[w][d0 + j] * expf(part_max[w] - mx);
    out[d0 + j] = a / total;
  }
}

}  // namespace

cudaError_t retained_decode(const RetainedProblem& problem, const PagedKvStore& store,
                            cudaStream_t stream) {
  if (retained_check(problem, store)[0] != '\0') return cudaErrorInvalidValue;
  const dim3 grid(problem.batch * problem.q_heads), block(32 * kWarps);
  switch (problem.tokens_per_step) {
    case 4:
      retained_decode_kernel<4><<<grid, block, 0, stream>>>(problem, store);
      break;
    case 2:
      retained_decode_kernel<2><<<grid, block, 0, stream>>>(problem, store);
      break;
    default:
      retained_decode_kernel<1><<<grid, block, 0, stream>>>(problem, store);
  }
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
