// Times the paged decode kernels of kernels/ per format, context and batch on the GPU, beside
// the device's copy bandwidth measured in the same process, and Palu's latent decode kernel
// (kernels/palu_decode.h: keys rebuilt and rotated per tile) at ranks 64 and 96 and its G-LRD
// (rank 128 per group of 4 KV heads), and GEAR's
// block decode kernel (kernels/gear_decode.h) at gear's and gear-4's settings, and the
// retained-index kernel (kernels/retained_decode.h) at SnapKV-2048's and StreamingLLM-512's kept
// tokens (kept-2k, kept-512; with four tokens' loads in flight per warp: kept-2k-t4,
// kept-512-t4). One layer of a
// Llama-3-8B-shaped model (32 query heads, 8 KV heads, head_dim 128). Caches hold random codes and
// scales (speed does not depend on values; fp formats hold finite random values); inputs are
// rotated among replicas so a small working set is not served from L2.
//
// usage: gpu_decode_bench [--out FILE.jsonl] [--quick] [--profile FORMAT:LOOP:BATCH:CONTEXT]
// --profile times that one case alone (e.g. int4:v3:16:32768, or gear:-:16:32768 for the rows
// without loops), for a profiler such as ncu.
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "gear_decode_launcher.h"
#include "palu_decode_launcher.h"
#include "retained_decode_launcher.h"

using kvbench::kernels::KvFormat;
namespace k = kvbench::kernels;

#define CHECK(expr)                                                                                \
  do {                                                                                             \
    cudaError_t e_ = (expr);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "%s:%d %s: %s %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_), \
                   k::decode_last_error());                                                        \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

namespace {

__global__ void fill_random(uint8_t* p, size_t n, uint32_t seed, int kind) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t x = uint32_t(i) * 2654435761u ^ seed;
    x ^= x >> 15, x *= 2246822519u, x ^= x >> 13;
    if (kind == 1 && i % 2 == 1) x = (x & 0x83) | 0x30;  // fp16 high byte: |x| in [2^-3, 2^1)
    if (kind == 2 && i % 2 == 1) x = 0x20 | (x & 0x03);  // fp16 scale ~0.01 .. 0.03, positive
    if (kind == 3 && ((x & 0x7f) == 0x7f)) x = 0;        // e4m3: no NaN codes
    p[i] = uint8_t(x);
  }
}

__global__ void fill_float(float* p, size_t n, float lo, float span) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    p[i] = lo + span * float((uint32_t(i) * 2654435761u) >> 8) * (1.f / 16777216.f);
}

struct Buffer {
  void* p = nullptr;
  size_t n = 0;
  void alloc(size_t bytes, int kind, uint32_t seed) {
    n = bytes;
    if (!bytes) return;
    CHECK(cudaMalloc(&p, bytes));
    fill_random<<<1024, 256>>>(static_cast<uint8_t*>(p), bytes, seed, kind);
    CHECK(cudaGetLastError());
  }
  ~Buffer() { cudaFree(p); }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double copy_bandwidth(cudaStream_t s) {
  const size_t bytes = size_t(2) << 30;
  void *a, *b;
  CHECK(cudaMalloc(&a, bytes));
  CHECK(cudaMalloc(&b, bytes));
  CHECK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> gbs;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0, s);
    CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
    cudaEventRecord(e1, s);
    cudaEventSynchronize(e1);
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) gbs.push_back(2.0 * bytes / (ms * 1e-3) / 1e9);  // read + write
  }
  cudaFree(a), cudaFree(b);
  return median(gbs);
}

// Block tables of a shuffled page pool (as a paged allocator leaves it after some churn),
// `pages` entries, and B sequence lengths of T tokens.
void upload_tables(Buffer& table, Buffer& lens, size_t pages, int B, int T) {
  std::vector<int> ids(pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(42));
  CHECK(cudaMalloc(&table.p, ids.size() * 4));
  CHECK(cudaMemcpy(table.p, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  std::vector<int> seq(B, T);
  CHECK(cudaMalloc(&lens.p, B * 4));
  CHECK(cudaMemcpy(lens.p, seq.data(), B * 4, cudaMemcpyHostToDevice));
}

// Median microseconds per step: 10 launches per timed round (step i rotates the replicas),
// 10 rounds after 3 warm-up rounds, CUDA events on stream s.
template <class Launch>
double time_steps(cudaStream_t s, Launch launch) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0), cudaEventCreate(&e1);
  std::vector<double> us;
  const int reps = 10;
  for (int it = 0; it < 13; ++it) {
    cudaEventRecord(e0, s);
    for (int r = 0; r < reps; ++r) launch(it * reps + r);
    cudaEventRecord(e1, s);
    CHECK(cudaEventSynchronize(e1));
    float ms;
    cudaEventElapsedTime(&ms, e0, e1);
    if (it >= 3) us.push_back(ms * 1e3 / reps);
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return median(us);
}

struct Result {
  double us, gbps, bytes;
  int splits;
};

// `loop`: v2, v2b (v2 at four blocks per multiprocessor: DecodePlan::min_blocks), v3
// (DecodePlan::multi_tile), v3h (v3 with two tiles per step) or v4 (DecodePlan::staged).
Result time_format(KvFormat f, int B, int T, int sm_count, const char* loop, cudaStream_t s) {
  const int Hq = 32, Hkv = 8, D = 128;
  const bool kivi = k::is_kivi(f);
  const int P = kivi ? 32 : 16, R = 128;
  const int pages_per_seq = (T + P - 1) / P;
  const k::PageBytes kb = k::page_bytes(f, true, P, D), vb = k::page_bytes(f, false, P, D);
  const double cache_bytes =
      double(B) * pages_per_seq * Hkv * (kb.data + kb.meta + vb.data + vb.meta);
  const int replicas = std::clamp(int(512e6 / cache_bytes), 1, 16);
  const size_t pages = size_t(replicas) * B * pages_per_seq;
  Buffer kd, vd, km, vm, kr, vr, ks, vs, q, out, table, lens, ws;
  kd.alloc(pages * Hkv * kb.data, f == KvFormat::kFp16 ? 1 : (f == KvFormat::kFp8 ? 3 : 0), 1);
  vd.alloc(pages * Hkv * vb.data, f == KvFormat::kFp16 ? 1 : (f == KvFormat::kFp8 ? 3 : 0), 2);
  km.alloc(pages * Hkv * kb.meta, 2, 3);
  vm.alloc(pages * Hkv * vb.meta, 2, 4);
  if (kivi)
    kr.alloc(size_t(B) * Hkv * R * D * 2, 1, 5), vr.alloc(size_t(B) * Hkv * R * D * 2, 1, 6);
  std::vector<float> scales(size_t(B) * Hkv, 0.01f);  // fp8: [batch, kv_heads]
  CHECK(cudaMalloc(&ks.p, scales.size() * 4));
  CHECK(cudaMalloc(&vs.p, scales.size() * 4));
  CHECK(cudaMemcpy(ks.p, scales.data(), scales.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(vs.p, scales.data(), scales.size() * 4, cudaMemcpyHostToDevice));
  q.alloc(size_t(B) * Hq * D * 2, 1, 7);
  out.alloc(size_t(B) * Hq * D * 2, 0, 8);
  upload_tables(table, lens, pages, B, T);

  k::DecodeProblem pr;
  pr.batch = B, pr.q_heads = Hq, pr.kv_heads = Hkv, pr.head_dim = D;
  pr.max_pages_per_seq = pages_per_seq, pr.max_seq_len = T;
  pr.seq_lens = static_cast<int*>(lens.p), pr.softmax_scale = 0.088f;
  pr.q = q.p, pr.out = out.p;
  k::PagedKv kv;
  kv.format = f, kv.page_size = P, kv.residual = R;
  kv.k_data = kd.p, kv.v_data = vd.p, kv.k_meta = km.p, kv.v_meta = vm.p;
  kv.k_residual = kr.p, kv.v_residual = vr.p;
  kv.k_head_scale = static_cast<float*>(ks.p), kv.v_head_scale = static_cast<float*>(vs.p);
  k::DecodePlan plan;
  plan.multi_tile = !std::strcmp(loop, "v3") || !std::strcmp(loop, "v3h");
  plan.tiles_per_step = std::strcmp(loop, "v3h") == 0 ? 2 : 0;
  plan.min_blocks = std::strcmp(loop, "v2b") == 0 ? 4 : 0;
  plan.staged = std::strcmp(loop, "v4") == 0;
  pr.block_table = static_cast<int*>(table.p);
  CHECK(k::decode_plan(pr, kv, sm_count, 0, &plan));
  if (plan.workspace_bytes) CHECK(cudaMalloc(&ws.p, plan.workspace_bytes));

  const double t = time_steps(s, [&](int step) {
    pr.block_table = static_cast<int*>(table.p) + size_t(step % replicas) * B * pages_per_seq;
    CHECK(k::decode_attention(pr, kv, plan, ws.p, s));
  });
  // Bytes a step must read: the cache (codes + meta; for KIVI the window rings too) + q + out.
  double bytes = cache_bytes + 2.0 * B * Hq * D * 2;
  if (kivi) bytes += 2.0 * B * Hkv * std::min(T, R) * D * 2;
  return {t, bytes / (t * 1e-6) / 1e9, bytes, plan.num_splits};
}

// Palu at rank R: fp16 latents in 32-token pages (as PaluPagedCache keeps them), fp16 key
// basis, fp32 value basis, cos/sin tables of finite values.
Result time_palu(int R, int B, int T, int sm_count, cudaStream_t s, int group = 1) {
  const int Hq = 32, Hkv = 8, D = 128, P = 32, latent_heads = Hkv / group;
  const int pages_per_seq = (T + P - 1) / P;
  const double cache_bytes = 2.0 * B * pages_per_seq * latent_heads * P * R * 2;
  const int replicas = std::clamp(int(512e6 / cache_bytes), 1, 16);
  const size_t pages = size_t(replicas) * B * pages_per_seq;
  const int tiles = (T + k::kPaluTile - 1) / k::kPaluTile;
  Buffer kl, vl, kb, vb, coarse, fine, q, out, table, lens, ws;
  kl.alloc(pages * latent_heads * P * R * 2, 1, 11);
  vl.alloc(pages * latent_heads * P * R * 2, 1, 12);
  kb.alloc(size_t(Hkv) * D * R * 2, 1, 13);
  const size_t nvb = size_t(Hkv) * D * R, ncoarse = size_t(tiles) * D, nfine = 16 * D,
               nq = size_t(B) * Hq * D;
  for (auto [buf, n] : {std::pair<Buffer*, size_t>{&vb, nvb},
                        {&coarse, ncoarse},
                        {&fine, nfine},
                        {&q, nq},
                        {&out, nq}}) {
    CHECK(cudaMalloc(&buf->p, n * 4));
    fill_float<<<256, 256>>>(static_cast<float*>(buf->p), n, -1.f, 2.f);
  }
  upload_tables(table, lens, pages, B, T);
  k::PaluProblem p;
  p.batch = B, p.q_heads = Hq, p.kv_heads = Hkv, p.head_dim = D, p.rank = R, p.page_size = P;
  p.group = group;
  p.max_pages_per_seq = pages_per_seq, p.seq_lens = static_cast<int*>(lens.p);
  p.k_latent = kl.p, p.v_latent = vl.p, p.k_basis = kb.p, p.v_basis = static_cast<float*>(vb.p);
  p.rope_coarse = static_cast<float*>(coarse.p), p.rope_tiles = tiles;
  p.rope_fine = static_cast<float*>(fine.p), p.softmax_scale = 0.088f;
  p.q = static_cast<float*>(q.p), p.out = static_cast<float*>(out.p);
  p.block_table = static_cast<int*>(table.p);
  k::PaluPlan plan;
  CHECK(k::palu_plan(p, T, sm_count, &plan));
  CHECK(cudaMalloc(&ws.p, plan.workspace_bytes));
  const double t = time_steps(s, [&](int step) {
    p.block_table = static_cast<int*>(table.p) + size_t(step % replicas) * B * pages_per_seq;
    CHECK(k::palu_decode(p, plan, ws.p, s));
  });
  const double bytes = cache_bytes + 2.0 * B * Hq * D * 4;  // latents + fp32 q and out
  return {t, bytes / (t * 1e-6) / 1e9, bytes, plan.splits};
}

// GEAR's outlier indices in a valid layout: keys, row j of channel c at token j * stride +
// c % stride (ascending in j, distinct, < n); values, token t's channels t % half and
// half + t % half (ascending, distinct).
__global__ void fill_key_index(int32_t* p, size_t rows, int d, int stride, size_t heads) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < heads * rows * d;
       i += size_t(gridDim.x) * blockDim.x)
    p[i] = int32_t((i / d % rows) * stride + (i % d) % stride);
}
__global__ void fill_value_index(int16_t* p, size_t n, int per_token, int d) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const int half = d / 2, j = int(i % per_token), t = int(i / per_token);
    p[i] = int16_t((j % 2) * half + (t + j / 2) % half);
  }
}

// GEAR with `bits`-bit codes, key group G, value group min(G, 128), outlier ratio 0.02 and
// `buffer`: each sequence one prefill block of T - T % buffer tokens (rank 4) and the rest
// exact, every tensor in the layout GearBlockCache keeps (random codes, positive scales,
// finite 16-bit factors, outliers in valid sorted positions).
Result time_gear(int bits, int G, int buffer, int B, int T, int sm_count, cudaStream_t s) {
  const int Hq = 32, Hkv = 8, D = 128, Gv = std::min(G, D), value_k = 1, rank = 4;
  const int w = T % buffer, n = T - w;
  const int key_k = std::min(int(std::lround(0.02 * n / 2)), n / 2);
  const size_t groups = n > 0 ? size_t(n + G - 1) / G : 0;
  // Bytes of one sequence (all KV heads): codes, scales and mins, outliers, factors, exact.
  const size_t codes = size_t(Hkv) * n * D * bits / 8, kscale = size_t(Hkv) * groups * D * 2,
               vscale = size_t(Hkv) * n * (D / Gv) * 2, kout = size_t(Hkv) * 2 * key_k * D,
               vout = size_t(Hkv) * n * 2 * value_k, qf = size_t(Hkv) * n * rank * 2,
               pf = size_t(Hkv) * rank * D * 2, exact = size_t(Hkv) * std::max(w, 1) * D * 2;
  const double seq_bytes = 2.0 * codes + 2.0 * kscale + 2.0 * vscale + kout * 6.0 + vout * 4.0 +
                           2.0 * (qf + pf) + 2.0 * Hkv * w * D * 2;
  const int replicas = std::clamp(int(512e6 / (seq_bytes * B)), 1, 16);
  const int seqs = replicas * B;
  std::vector<Buffer> bufs(size_t(seqs) * 16);
  std::vector<k::GearBlock> blocks(static_cast<size_t>(seqs));
  std::vector<k::GearSequence> rows(static_cast<size_t>(seqs));
  Buffer blocks_dev, rows_dev, lens, q, out, ws;
  CHECK(cudaMalloc(&blocks_dev.p, blocks.size() * sizeof(k::GearBlock)));
  for (int i = 0; i < seqs; ++i) {
    Buffer* b = &bufs[size_t(i) * 16];
    k::GearBlock& g = blocks[size_t(i)];
    g.start = 0, g.n = n, g.rank = n > 0 ? rank : 0, g.key_k = key_k;
    k::GearSide* sides[2] = {&g.key, &g.value};
    for (int side = 0; side < 2; ++side, b += 7) {
      b[0].alloc(codes, 0, 100 + i);
      b[1].alloc(side ? vscale : kscale, 2, 200 + i);
      b[2].alloc(side ? vscale : kscale, 1, 300 + i);
      b[3].alloc((side ? vout : kout) * 2, 1, 400 + i);
      b[4].alloc((side ? vout : kout) * (side ? 2 : 4), 0, 0);
      b[5].alloc(qf, 1, 500 + i);
      b[6].alloc(pf, 1, 600 + i);
      if (side == 0 && kout)
        fill_key_index<<<256, 256>>>(static_cast<int32_t*>(b[4].p), 2 * key_k, D, n / (2 * key_k),
                                     Hkv);
      if (side == 1 && vout)
        fill_value_index<<<256, 256>>>(static_cast<int16_t*>(b[4].p), vout, 2 * value_k, D);
      k::GearSide& x = *sides[side];
      x.codes = static_cast<const uint8_t*>(b[0].p);
      x.scales = static_cast<const uint16_t*>(b[1].p),
      x.mins = static_cast<const uint16_t*>(b[2].p);
      x.outlier_values = static_cast<const uint16_t*>(b[3].p), x.outlier_index = b[4].p;
      x.q = static_cast<const uint16_t*>(b[5].p), x.p = static_cast<const uint16_t*>(b[6].p);
    }
    b[0].alloc(exact, 1, 700 + i), b[1].alloc(exact, 1, 800 + i);
    k::GearSequence& r = rows[size_t(i)];
    r.blocks = static_cast<const k::GearBlock*>(blocks_dev.p) + i;
    r.num_blocks = n > 0 ? 1 : 0, r.compressed = n;
    r.exact_k = static_cast<const uint16_t*>(b[0].p),
    r.exact_v = static_cast<const uint16_t*>(b[1].p);
    r.exact_stride = Hkv * D;
  }
  CHECK(cudaGetLastError());
  CHECK(cudaMemcpy(blocks_dev.p, blocks.data(), blocks.size() * sizeof(k::GearBlock),
                   cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&rows_dev.p, rows.size() * sizeof(k::GearSequence)));
  CHECK(cudaMemcpy(rows_dev.p, rows.data(), rows.size() * sizeof(k::GearSequence),
                   cudaMemcpyHostToDevice));
  const std::vector<int> seq_lens(size_t(B), T);
  CHECK(cudaMalloc(&lens.p, B * 4));
  CHECK(cudaMemcpy(lens.p, seq_lens.data(), B * 4, cudaMemcpyHostToDevice));
  const size_t nq = size_t(B) * Hq * D;
  for (Buffer* buf : {&q, &out}) {
    CHECK(cudaMalloc(&buf->p, nq * 4));
    fill_float<<<256, 256>>>(static_cast<float*>(buf->p), nq, -1.f, 2.f);
  }
  k::GearProblem p;
  p.batch = B, p.q_heads = Hq, p.kv_heads = Hkv, p.head_dim = D, p.bits = bits;
  p.key_group = G, p.value_group = Gv, p.value_k = value_k;
  p.seq_lens = static_cast<int*>(lens.p), p.softmax_scale = 0.088f;
  p.q = static_cast<float*>(q.p), p.out = static_cast<float*>(out.p);
  p.seqs = static_cast<const k::GearSequence*>(rows_dev.p);
  k::GearPlan plan;
  CHECK(k::gear_plan(p, T, sm_count, &plan));
  CHECK(cudaMalloc(&ws.p, plan.workspace_bytes));
  const double t = time_steps(s, [&](int step) {
    p.seqs = static_cast<const k::GearSequence*>(rows_dev.p) + size_t(step % replicas) * B;
    CHECK(k::gear_decode(p, plan, ws.p, s));
  });
  const double bytes = seq_bytes * B + 2.0 * nq * 4;  // the blocks and exact rows + fp32 q, out
  return {t, bytes / (t * 1e-6) / 1e9, bytes, plan.splits};
}

// The retained-index kernel (retained_decode.h) over fp16 pages, as SnapKV, StreamingLLM and
// H2O decode on the GPU path: each (sequence, KV head) lists `listed` positions (sorted,
// distinct, random: a selection scatters over the whole context) below its tail, then the
// tail of `tail` tokens up to T. Bytes: the kept tokens' K and V rows, the lists, fp32 q/out.
Result time_retained(int listed, int tail, int B, int T, cudaStream_t s, int tokens = 1) {
  const int Hq = 32, Hkv = 8, D = 128, P = 16;
  const int pages_per_seq = (T + P - 1) / P;
  const k::PageBytes pb = k::page_bytes(KvFormat::kFp16, true, P, D);
  const double cache_bytes = 2.0 * B * pages_per_seq * Hkv * pb.data;
  const int replicas = std::clamp(int(512e6 / cache_bytes), 1, 16);
  const size_t pages = size_t(replicas) * B * pages_per_seq;
  Buffer kd, vd, q, out, table, lens, lists, ptrs, counts, tails;
  kd.alloc(pages * Hkv * pb.data, 1, 21);
  vd.alloc(pages * Hkv * pb.data, 1, 22);
  const size_t nq = size_t(B) * Hq * D;
  for (Buffer* b : {&q, &out}) {
    CHECK(cudaMalloc(&b->p, nq * 4));
    fill_float<<<256, 256>>>(static_cast<float*>(b->p), nq, -1.f, 2.f);
  }
  upload_tables(table, lens, pages, B, T);
  const int start = T - tail;
  std::mt19937 rng(7);
  std::vector<int> all(size_t(B) * Hkv * listed), pool(size_t(std::max(start, 0)));
  std::iota(pool.begin(), pool.end(), 0);
  for (int row = 0; row < B * Hkv; ++row) {
    std::shuffle(pool.begin(), pool.end(), rng);
    std::sort(pool.begin(), pool.begin() + listed);
    std::copy(pool.begin(), pool.begin() + listed, all.begin() + size_t(row) * listed);
  }
  CHECK(cudaMalloc(&lists.p, std::max<size_t>(all.size(), 1) * 4));
  CHECK(cudaMemcpy(lists.p, all.data(), all.size() * 4, cudaMemcpyHostToDevice));
  std::vector<const int*> where(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b)
    where[size_t(b)] = static_cast<const int*>(lists.p) + size_t(b) * Hkv * listed;
  std::vector<int> n(size_t(B), listed), t0(size_t(B), start);
  CHECK(cudaMalloc(&ptrs.p, B * sizeof(int*)));
  CHECK(cudaMemcpy(ptrs.p, where.data(), B * sizeof(int*), cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&counts.p, B * 4));
  CHECK(cudaMemcpy(counts.p, n.data(), B * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&tails.p, B * 4));
  CHECK(cudaMemcpy(tails.p, t0.data(), B * 4, cudaMemcpyHostToDevice));
  k::RetainedProblem p;
  p.batch = B, p.q_heads = Hq, p.kv_heads = Hkv, p.head_dim = D;
  p.max_pages_per_seq = pages_per_seq, p.seq_lens = static_cast<int*>(lens.p);
  p.kept_lists = static_cast<const int* const*>(ptrs.p);
  p.kept_counts = static_cast<int*>(counts.p), p.tail_start = static_cast<int*>(tails.p);
  p.softmax_scale = 0.088f, p.q = static_cast<float*>(q.p), p.out = static_cast<float*>(out.p);
  p.tokens_per_step = tokens;
  k::PagedKvStore store;
  store.format = KvFormat::kFp16, store.page_size = P, store.k_data = kd.p, store.v_data = vd.p;
  const double t = time_steps(s, [&](int step) {
    p.block_table = static_cast<int*>(table.p) + size_t(step % replicas) * B * pages_per_seq;
    CHECK(k::retained_decode(p, store, s));
  });
  const double bytes = 2.0 * B * Hkv * (listed + tail) * D * 2 + 4.0 * all.size() + 2.0 * nq * 4;
  return {t, bytes / (t * 1e-6) / 1e9, bytes, 1};
}

// The rows that are not a paged format's loop: Palu's, GEAR's and the retained-index kernel's,
// by the names the table prints; false for another name.
bool time_named(const std::string& name, int B, int T, int sm_count, cudaStream_t s, Result* r) {
  if (name == "palu-r64") return *r = time_palu(64, B, T, sm_count, s), true;
  if (name == "palu-r96") return *r = time_palu(96, B, T, sm_count, s), true;
  if (name == "palu-r128-g4") return *r = time_palu(128, B, T, sm_count, s, 4), true;
  if (name == "gear") return *r = time_gear(2, 64, 64, B, T, sm_count, s), true;
  if (name == "gear-4") return *r = time_gear(4, 32, 20, B, T, sm_count, s), true;
  // SnapKV-2048's decode (2016 selected + a 32-token window) and StreamingLLM-512's (4 sinks +
  // a 508-token window), over contexts that hold them.
  if (name == "kept-2k" && T > 2048) return *r = time_retained(2016, 32, B, T, s), true;
  if (name == "kept-512" && T > 512) return *r = time_retained(4, 508, B, T, s), true;
  // The same with four tokens' loads in flight per warp (tokens_per_step 4).
  if (name == "kept-2k-t4" && T > 2048) return *r = time_retained(2016, 32, B, T, s, 4), true;
  if (name == "kept-512-t4" && T > 512) return *r = time_retained(4, 508, B, T, s, 4), true;
  return false;
}

// One case alone ("int4:v3:16:32768", or "gear:-:16:32768" for a row without loops), so that a
// profiler sees only its launches.
int profile_one(const std::string& spec) {
  char name[32] = {}, loop[8] = {};
  int B = 0, T = 0;
  if (std::sscanf(spec.c_str(), "%31[^:]:%7[^:]:%d:%d", name, loop, &B, &T) != 4 || B < 1 ||
      T < 1 ||
      (std::strcmp(loop, "v2") && std::strcmp(loop, "v2b") && std::strcmp(loop, "v3") &&
       std::strcmp(loop, "v3h") && std::strcmp(loop, "v4") && std::strcmp(loop, "-"))) {
    std::fprintf(stderr, "--profile expects FORMAT:v2|v2b|v3|v3h|v4|-:BATCH:CONTEXT, got '%s'\n",
                 spec.c_str());
    return 2;
  }
  if (!std::strcmp(loop, "-")) {
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    Result r;
    if (!time_named(name, B, T, prop.multiProcessorCount, s, &r)) {
      std::fprintf(stderr,
                   "--profile: unknown row '%s' (palu-r64, palu-r96, palu-r128-g4, "
                   "gear, gear-4, kept-2k, kept-512, kept-2k-t4, kept-512-t4)\n",
                   name);
      return 2;
    }
    std::printf("%s %d x %d: %.1f us/step, %.0f GB/s, %d splits\n", name, B, T, r.us, r.gbps,
                r.splits);
    return 0;
  }
  for (int f = 0; f <= int(KvFormat::kInt2); ++f) {
    if (std::strcmp(k::format_name(KvFormat(f)), name)) continue;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    const Result r = time_format(KvFormat(f), B, T, prop.multiProcessorCount, loop, s);
    std::printf("%s %s %d x %d: %.1f us/step, %.0f GB/s, %d splits\n", name, loop, B, T, r.us,
                r.gbps, r.splits);
    return 0;
  }
  std::fprintf(stderr, "--profile: unknown format '%s'\n", name);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path, profile;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc)
      out_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick"))
      quick = true;
    else if (!std::strcmp(argv[i], "--profile") && i + 1 < argc)
      profile = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: %s [--out FILE.jsonl] [--quick] [--profile FORMAT:LOOP:BATCH:CONTEXT]\n",
                   argv[0]);
      return 2;
    }
  }
  // Line-buffered: a run cut at its time cap keeps every row it finished, whole.
  std::setvbuf(stdout, nullptr, _IOLBF, 1 << 16);
  if (!profile.empty()) return profile_one(profile);
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  const double copy_gbs = copy_bandwidth(s);
  std::printf("device %s, %d SMs; copy bandwidth %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, copy_gbs);
  FILE* jl = out_path.empty() ? nullptr : std::fopen(out_path.c_str(), "w");
  if (jl) std::setvbuf(jl, nullptr, _IOLBF, 1 << 16);
  if (jl) std::fprintf(jl, "{\"device\":\"%s\",\"copy_gbps\":%.1f}\n", prop.name, copy_gbs);
  const std::vector<KvFormat> formats = {KvFormat::kFp16,  KvFormat::kBf16,     KvFormat::kInt8,
                                         KvFormat::kFp8,   KvFormat::kInt4,     KvFormat::kKivi4,
                                         KvFormat::kKivi2, KvFormat::kInt4Asym, KvFormat::kInt2};
  const int Hkv_all = 8;                    // KV heads of the timed layer
  std::vector<std::pair<int, int>> shapes;  // (batch, context)
  for (int B : {1, 16, 64})
    for (int T : {1024, 4096, 16384, 32768, 65536, 131072})
      if (double(B) * T <= 2.1e6 && (!quick || T == 32768 || T == 4096)) shapes.push_back({B, T});
  // The main loops side by side (v2: one tile per warp step; v2b: v2 at four blocks per
  // multiprocessor, not for KIVI; v3: DecodePlan::multi_tile; v3h: v3 with two tiles per step,
  // fewer registers, for the formats the acceptance names; v4: staged through shared memory,
  // the quantized formats), every speed-up against v2's fp16 at the same shape.
  std::printf("%-9s %4s %5s %7s %10s %9s %6s %8s %8s %6s\n", "format", "loop", "batch", "context",
              "us/step", "GB/s", "%copy", "vs fp16", "ideal", "splits");
  for (auto [B, T] : shapes) {
    double fp16_us = 0;
    for (KvFormat f : formats)
      for (const char* loop : {"v2", "v2b", "v3", "v3h", "v4"}) {
        const bool v3h = !std::strcmp(loop, "v3h");
        if (v3h && f != KvFormat::kFp16 && f != KvFormat::kInt4 && f != KvFormat::kKivi4 &&
            f != KvFormat::kKivi2)
          continue;
        if (!std::strcmp(loop, "v2b") && k::is_kivi(f)) continue;
        if (!std::strcmp(loop, "v4") && k::format_bits(f) == 16) continue;
        Result r = time_format(f, B, T, prop.multiProcessorCount, loop, s);
        if (f == KvFormat::kFp16 && !std::strcmp(loop, "v2")) fp16_us = r.us;
        const double ideal = k::bytes_per_token(KvFormat::kFp16, 16, 128) /
                             k::bytes_per_token(f, k::is_kivi(f) ? 32 : 16, 128);
        std::printf("%-9s %4s %5d %7d %10.1f %9.0f %5.0f%% %7.2fx %7.2fx %6d\n", k::format_name(f),
                    loop, B, T, r.us, r.gbps, 100 * r.gbps / copy_gbs, fp16_us / r.us, ideal,
                    r.splits);
        if (jl)
          std::fprintf(jl,
                       "{\"format\":\"%s\",\"loop\":\"%s\",\"batch\":%d,\"context\":%d,"
                       "\"us_per_step\":%.3f,\"bytes\":%.0f,\"gbps\":%.1f,\"copy_fraction\":%.4f,"
                       "\"speedup_vs_fp16\":%.3f,\"ideal_ratio\":%.3f,\"splits\":%d}\n",
                       k::format_name(f), loop, B, T, r.us, r.bytes, r.gbps, r.gbps / copy_gbs,
                       fp16_us / r.us, ideal, r.splits);
      }
    // Palu at ranks 64 and 96 (a latent per KV head), and G-LRD: a rank-128 latent per 4 heads;
    // GEAR; the retained-index kernel at SnapKV-2048's and StreamingLLM-512's kept tokens.
    // ideal: fp16's bytes of the whole context over the row's own (q and out left out).
    for (const char* name : {"palu-r64", "palu-r96", "palu-r128-g4", "gear", "gear-4", "kept-2k",
                             "kept-512", "kept-2k-t4", "kept-512-t4"}) {
      Result r;
      if (!time_named(name, B, T, prop.multiProcessorCount, s, &r)) continue;
      const double fp16_bytes = 2.0 * B * Hkv_all * T * 128 * 2;
      const double ideal = fp16_bytes / (r.bytes - 2.0 * B * 32 * 128 * 4);
      std::printf("%-9s %4s %5d %7d %10.1f %9.0f %5.0f%% %7.2fx %7.2fx %6d\n", name, "-", B, T,
                  r.us, r.gbps, 100 * r.gbps / copy_gbs, fp16_us / r.us, ideal, r.splits);
      if (jl)
        std::fprintf(jl,
                     "{\"format\":\"%s\",\"loop\":\"-\",\"batch\":%d,\"context\":%d,"
                     "\"us_per_step\":%.3f,\"bytes\":%.0f,\"gbps\":%.1f,\"copy_fraction\":%.4f,"
                     "\"speedup_vs_fp16\":%.3f,\"ideal_ratio\":%.3f,\"splits\":%d}\n",
                     name, B, T, r.us, r.bytes, r.gbps, r.gbps / copy_gbs, fp16_us / r.us, ideal,
                     r.splits);
    }
  }
  if (jl) std::fclose(jl);
  return 0;
}
