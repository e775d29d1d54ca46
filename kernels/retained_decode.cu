#include "retained_decode_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = kRetainedMaxHeadDim / 32;

// Block = one (sequence, query head), four warps. Warp w attends the kept tokens w, w + 4, ...
// one at a time; its lanes decode a token's channels in slices (decode_paged_channels: a row's
// bytes are read by the whole warp at once), reduce the dot product with shuffles and keep an
// online softmax over their own channels. The four warps' partial softmaxes merge through
// shared memory. The same arithmetic as retained_partial(), in another summation order.
__global__ void retained_decode_kernel(RetainedProblem pr, PagedKvStore s) {
  __shared__ float part_max[kWarps], part_sum[kWarps], part_acc[kWarps][kRetainedMaxHeadDim];
  const int b = blockIdx.x / pr.q_heads, qh = blockIdx.x % pr.q_heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int D = pr.head_dim, per = D / 32, d0 = lane * per;
  const RetainedHead r = retained_head(pr, b, qh);
  const int h = r.h, row = r.row, T = r.T;
  const float* q = r.q;
  float qv[kMaxPerLane], x[kMaxPerLane], acc[kMaxPerLane];
  for (int j = 0; j < per; ++j) qv[j] = q[d0 + j], acc[j] = 0.f;
  float m = -INFINITY, sum = 0.f;
  for (int i = warp; i < r.n; i += kWarps) {
    const int t = r.token(i);
    decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/true, h, t, T, d0, d0 + per, x);
    float dot = 0.f;
    for (int j = 0; j < per; ++j) dot = fmaf(qv[j], x[j], dot);
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float score = dot * pr.softmax_scale, mn = fmaxf(m, score);
    if (pr.scores && lane == 0)
      pr.scores[(size_t(b) * pr.q_heads + qh) * pr.score_stride + i] = score;
    const float rescale = expf(m - mn), w = expf(score - mn);  // expf(-inf) = 0 at first
    decode_paged_channels(s, r.pages, pr.kv_heads, D, row, /*key=*/false, h, t, T, d0, d0 + per, x);
    for (int j = 0; j < per; ++j) acc[j] = fmaf(w, x[j], acc[j] * rescale);
    sum = sum * rescale + w;
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
  retained_decode_kernel<<<problem.batch * problem.q_heads, 32 * kWarps, 0, stream>>>(problem,
                                                                                      store);
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
