#include "latent_decode_launcher.h"

namespace kvbench::kernels {
namespace {

constexpr int kThreads = 256;

// The block's maximum (max) or sum (!max) of `v`; every thread gets it.
__device__ float block_reduce(float v, bool max, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float o = scratch[threadIdx.x + half];
      scratch[threadIdx.x] = max ? fmaxf(scratch[threadIdx.x], o) : scratch[threadIdx.x] + o;
    }
    __syncthreads();
  }
  const float r = scratch[0];
  __syncthreads();  // scratch is reused by the next reduction
  return r;
}

// A first version that reads the layout exactly as the host reference does (one thread per
// token reads its row of coefficients); coalescing the score loop is the next step.
__global__ void latent_decode_kernel(LatentProblem p, float* workspace) {
  __shared__ float q_lat[kLatentMaxRank], v_lat[kLatentMaxRank], scratch[kThreads];
  const int b = blockIdx.x / p.q_heads, qh = blockIdx.x % p.q_heads, tid = threadIdx.x;
  const int T = p.seq_lens[b];
  float* w = workspace + size_t(blockIdx.x) * p.max_tokens;
  for (int i = tid; i < p.rank; i += kThreads) q_lat[i] = latent::query_component(p, b, qh, i);
  __syncthreads();
  float m = -INFINITY;
  for (int t = tid; t < T; t += kThreads) m = fmaxf(m, w[t] = latent::score(p, b, qh, q_lat, t));
  m = block_reduce(m, true, scratch);
  float sum = 0.f;
  for (int t = tid; t < T; t += kThreads) sum += (w[t] = expf(w[t] - m));
  sum = block_reduce(sum, false, scratch);
  for (int t = tid; t < T; t += kThreads) w[t] /= sum;
  __syncthreads();  // every weight written before any thread sums over all of them
  for (int i = tid; i < p.rank; i += kThreads)
    v_lat[i] = latent::value_component(p, b, qh, w, T, i);
  __syncthreads();
  float* out = p.out + (size_t(b) * p.q_heads + qh) * p.head_dim;
  for (int d = tid; d < p.head_dim; d += kThreads) out[d] = latent::output_channel(p, qh, v_lat, d);
}

}  // namespace

cudaError_t latent_decode(const LatentProblem& problem, void* workspace, cudaStream_t stream) {
  if (latent_check(problem)[0] != '\0' || workspace == nullptr) return cudaErrorInvalidValue;
  latent_decode_kernel<<<problem.batch * problem.q_heads, kThreads, 0, stream>>>(
      problem, static_cast<float*>(workspace));
  return cudaGetLastError();
}

}  // namespace kvbench::kernels
