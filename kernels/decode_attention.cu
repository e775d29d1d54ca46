#include "decode_attention.h"

#include <algorithm>
#include <string>

#include "decode_attention_device.h"
#include "dispatch.h"

// The kernels' design and device code: decode_attention_device.h.

namespace kvbench::kernels {
namespace {

using namespace decode_device;

thread_local std::string g_last_error;

template <KvFormat F, int D, bool kMulti, int kNT = 0, bool kStaged = false>
__global__ void __launch_bounds__(kThreads)
    decode_kernel(DecodeProblem pr, PagedKv kv, int num_splits, float* ws) {
  decode_body<F, D, kMulti, kNT, kStaged>(pr, kv, num_splits, ws);
}

// v2 held to four blocks of kThreads per multiprocessor (at most 128 registers a thread, where
// ptxas gives v2 up to 162 outside KIVI): "v2b" (DecodePlan::min_blocks). ncu found the quantized
// v2 loops latency-bound at 3-4 blocks per multiprocessor; not built for KIVI, whose v2 loop spills
// 224-252 bytes at that bound (docs/perf-notes.md).
template <KvFormat F, int D>
__global__ void __launch_bounds__(kThreads, 4)
    decode_kernel_4(DecodeProblem pr, PagedKv kv, int num_splits, float* ws) {
  decode_body<F, D, false>(pr, kv, num_splits, ws);
}

// Merges the split partials of one (head, sequence): one thread per channel.
template <bool kBf16Out>
__global__ void combine_kernel(const float* ws, int num_splits, int D, void* out) {
  combine_body<kBf16Out>(ws, num_splits, D, out);
}

template <KvFormat F, int D>
cudaError_t launch(const DecodeProblem& pr, const PagedKv& kv, const DecodePlan& plan, void* ws,
                   cudaStream_t stream) {
  dim3 grid(plan.num_splits, pr.kv_heads, pr.batch);
  float* w = static_cast<float*>(ws);
  const bool built = with_loop<F, D>(plan, [&](auto multi, auto nt, auto four_blocks, auto staged) {
    if constexpr (decltype(four_blocks)::value)
      decode_kernel_4<F, D><<<grid, kThreads, 0, stream>>>(pr, kv, plan.num_splits, w);
    else
      decode_kernel<F, D, decltype(multi)::value, decltype(nt)::value, decltype(staged)::value>
          <<<grid, kThreads, 0, stream>>>(pr, kv, plan.num_splits, w);
  });
  if (!built) return cudaErrorInvalidValue;  // decode_attention() refuses such plans first
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || plan.num_splits == 1) return err;
  dim3 cgrid(pr.q_heads, pr.batch);
  combine_kernel<F == KvFormat::kBf16><<<cgrid, D, 0, stream>>>(w, plan.num_splits, D, pr.out);
  return cudaGetLastError();
}

cudaError_t reject(const std::string& why) {
  g_last_error = why;
  return cudaErrorInvalidValue;
}

}  // namespace

const char* decode_last_error() { return g_last_error.c_str(); }

cudaError_t decode_plan(const DecodeProblem& pr, const PagedKv& kv, int sm_count, int force_splits,
                        DecodePlan* plan) {
  g_last_error.clear();
  if (pr.head_dim != 64 && pr.head_dim != 128)
    return reject("unsupported head_dim: " + std::to_string(pr.head_dim) + " (supported: 64, 128)");
  if (pr.batch < 1 || pr.kv_heads < 1 || pr.q_heads < 1 || pr.q_heads % pr.kv_heads != 0)
    return reject("q_heads must be a positive multiple of kv_heads");
  if (pr.q_heads / pr.kv_heads > kDecodeMaxQPerKv)
    return reject("unsupported GQA group: " + std::to_string(pr.q_heads / pr.kv_heads) +
                  " (at most " + std::to_string(kDecodeMaxQPerKv) + ")");
  if (plan->tiles_per_step != 0 && !(plan->multi_tile && plan->tiles_per_step == 2))
    return reject("tiles_per_step must be 0, or 2 with multi_tile");
  if (plan->min_blocks != 0 && (plan->min_blocks != 4 || plan->multi_tile))
    return reject("min_blocks must be 0, or 4 without multi_tile");
  if (plan->min_blocks == 4 && is_kivi(kv.format))
    return reject("min_blocks 4 is not built for KIVI (its v2 loop spills at that bound)");
  if (plan->staged && (plan->multi_tile || plan->min_blocks != 0))
    return reject("staged (v4) is a loop of its own: not with multi_tile or min_blocks");
  if (plan->staged && format_bits(kv.format) == 16)
    return reject("staged (v4) is built for the quantized formats, not fp16 or bf16");
  if (kv.page_size != 16 && kv.page_size != 32 && kv.page_size != 64)
    return reject("unsupported page_size: " + std::to_string(kv.page_size) +
                  " (supported: 16, 32, 64)");
  if (!pr.q || !pr.out || !pr.block_table || !pr.seq_lens || !kv.k_data || !kv.v_data)
    return reject("null pointer among q, out, block_table, seq_lens, k_data, v_data");
  const KvFormat f = kv.format;
  if ((is_block(f) || is_kivi(f)) && (!kv.k_meta || !kv.v_meta))
    return reject(std::string(format_name(f)) + " needs k_meta and v_meta");
  if (f == KvFormat::kFp8 && (!kv.k_head_scale || !kv.v_head_scale))
    return reject("fp8 needs k_head_scale and v_head_scale");
  if (is_kivi(f)) {
    if (kv.residual < kv.page_size || kv.residual % kv.page_size != 0)
      return reject("KIVI residual must be a positive multiple of page_size (the group)");
    if (pr.head_dim % kv.page_size != 0)
      return reject("KIVI group (page_size) must divide head_dim");
    if (!kv.k_residual || !kv.v_residual) return reject("KIVI needs k_residual and v_residual");
  }
  // Rows, metadata and rings are read as 16-byte vectors.
  for (const void* p : {kv.k_data, kv.v_data, kv.k_meta, kv.v_meta, kv.k_residual, kv.v_residual})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
      return reject("k_data, v_data, k_meta, v_meta and the rings must be 16-byte aligned");
  if (pr.max_seq_len < 1 || pr.max_pages_per_seq * kv.page_size < pr.max_seq_len)
    return reject("max_seq_len must be >= 1 and fit in max_pages_per_seq pages");
  // Splits. v2: enough blocks to fill every multiprocessor twice (v2b: four times, the blocks
  // it can hold at once), each split at least 4 tiles per warp. v3 and v4: about eight blocks per
  // multiprocessor, so the last wave's idle tail is short, but at least 8 tiles (128 tokens)
  // per warp of a split.
  const int tiles = (pr.max_seq_len + kTile - 1) / kTile;
  const int blocks = pr.batch * pr.kv_heads;
  const bool runs = plan->multi_tile || plan->staged;  // each warp a run of tiles
  const int per_sm = runs ? 8 : (plan->min_blocks == 4 ? 4 : 2);
  const int min_tiles = runs ? 8 : 4;
  // v2b rounds down: its grid then fits the blocks the multiprocessors hold at once (a
  // rounded-up count leaves a last partial wave running nearly alone).
  int splits = plan->min_blocks == 4 ? (per_sm * sm_count) / blocks
                                     : (per_sm * sm_count + blocks - 1) / blocks;
  splits = std::max(1, std::min(splits, tiles / (min_tiles * kWarps)));
  if (force_splits > 0) splits = force_splits;
  plan->num_splits = splits;
  plan->workspace_bytes =
      splits == 1 ? 0 : size_t(pr.batch) * pr.q_heads * splits * (pr.head_dim + 2) * sizeof(float);
  return cudaSuccess;
}

cudaError_t decode_attention(const DecodeProblem& pr, const PagedKv& kv, const DecodePlan& plan,
                             void* workspace, cudaStream_t stream) {
  if (plan.num_splits > 1 && !workspace) return reject("num_splits > 1 needs a workspace");
  // A plan not from decode_plan for this format would launch nothing for KIVI under v2b.
  if (plan.min_blocks != 0 && (plan.min_blocks != 4 || plan.multi_tile || is_kivi(kv.format)))
    return reject("min_blocks must be 0, or 4 without multi_tile and not for KIVI");
  if (plan.staged && (plan.multi_tile || plan.min_blocks != 0 || format_bits(kv.format) == 16))
    return reject("staged (v4) is its own loop, for the quantized formats");
  cudaError_t err = cudaErrorInvalidValue;
  KVB_DISPATCH_FORMAT(kv.format, kF, KVB_DISPATCH_HEAD_DIM(pr.head_dim, kD, {
                        err = launch<kF, kD>(pr, kv, plan, workspace, stream);
                      }));
  return err;
}

}  // namespace kvbench::kernels