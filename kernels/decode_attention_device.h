// The device code of kernels/decode_attention.cu: the decode loops (v2, v3), the split merge
// and the launcher's choice of loop. A header so that a CPU test runs exactly this code with
// emulated threads, warps, shuffles and tensor-core mma (tests/unit/decode_emulation_test.cpp,
// tests/unit/cuda_emulation.h): compiled by nvcc, or by a host compiler that includes CUDA's
// fp16/bf16/fp8 headers, then defines KVB_KERNEL_EMULATED and the names the emulation gives.
//
// Design (see docs/perf-notes.md for the measurements behind it). A warp attends over tiles
// of 16 tokens with tensor-core mma.m16n8k16: scores S = Q K^T with the GQA group's (up to 8)
// query heads as the M rows, and the output as O^T = V^T P^T, so the score fragment of one
// mma is already the P fragment of the next (no shuffles, no shared memory). Codes are
// dequantized in registers straight into fp16 fragments with the magic-number tricks
// (code_pairs.h: one LOP3 makes a pair of codes an fp16 pair base + code, one shift per
// word), then a subtraction and a scale: the first version did the dot products on CUDA
// cores in fp32 and was bound by dequantize and FMA instructions (INT4 at 9% of copy
// bandwidth). In the v3 loop KIVI keys skip the scale: their per-channel scales and mins
// are folded into the query once per page (Kernel::fold_key_meta).
//
// Which channels a lane holds is free on the key side (a dot product does not care about
// channel order, so the query fragment is loaded in the same order) and bookkeeping on the
// value side (the output is written through the same map); lanes are given 16-byte pieces
// of each row so every load instruction of a warp reads contiguous memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "code_pairs.h"
#include "decode_attention.h"
#include "mma_sm80.cuh"

#if !defined(__CUDACC__) && !defined(KVB_KERNEL_EMULATED)
#error "decode_attention_device.h is device code: nvcc, or a host test that emulates CUDA's names"
#endif

namespace kvbench::kernels::decode_device {
// Internal to each file including it (the kernels' and the emulating test's).
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;  // tokens per warp step
constexpr float kLog2e = 1.4426950408889634f;

using mma::as_u32;
using mma::fast_exp2;
using mma::lop3_and_or;
using mma::mma16816;
using mma::u32_as_h2;

template <KvFormat F>
constexpr int kBitsOf = (F == KvFormat::kKivi2 || F == KvFormat::kInt2) ? 2
                        : (F == KvFormat::kInt4 || F == KvFormat::kKivi4 ||
                           F == KvFormat::kInt4Asym)
                            ? 4
                        : (F == KvFormat::kInt8 || F == KvFormat::kFp8) ? 8
                                                                        : 16;

// The N channels of a row that one lane holds, when NL lanes share the row. The slice is
// cut in pieces of at most 16 bytes; piece k of lane `who` starts at channel k*NL*E + who*E.
template <KvFormat F, int N, int NL>
struct Slice {
  static constexpr int kBits = kBitsOf<F>;
  static constexpr int kBytes = N * kBits / 8;
  static constexpr int kPieceBytes = kBytes < 16 ? kBytes : 16;
  static constexpr int kPieces = kBytes / kPieceBytes;
  static constexpr int kE = kPieceBytes * 8 / kBits;  // elements per piece
  static constexpr int kWords = kBytes < 4 ? 1 : kBytes / 4;
  static constexpr int kPairs = N / 2;

  __device__ static int channel(int who, int e) { return (e / kE) * (NL * kE) + who * kE + e % kE; }

  // The two slice elements of pair p, in the order dequant() emits them (code_pairs.h).
  __device__ static int2 pair(int p) {
    const codes::PairElements e = codes::pair_elements(kBits, kBytes, p);
    return make_int2(e.x, e.y);
  }

  // From global memory through the read-only path, or (kGlobal false) from shared memory.
  template <bool kGlobal = true>
  __device__ static void load(const char* row, int who, uint32_t (&w)[kWords]) {
#pragma unroll
    for (int k = 0; k < kPieces; ++k) {
      const char* p = row + k * NL * kPieceBytes + who * kPieceBytes;
      if constexpr (kPieceBytes == 16) {
        const uint4* a = reinterpret_cast<const uint4*>(p);
        uint4 v = kGlobal ? __ldg(a) : *a;
        w[4 * k] = v.x, w[4 * k + 1] = v.y, w[4 * k + 2] = v.z, w[4 * k + 3] = v.w;
      } else if constexpr (kPieceBytes == 8) {
        const uint2* a = reinterpret_cast<const uint2*>(p);
        uint2 v = kGlobal ? __ldg(a) : *a;
        w[2 * k] = v.x, w[2 * k + 1] = v.y;
      } else if constexpr (kPieceBytes == 4) {
        const uint32_t* a = reinterpret_cast<const uint32_t*>(p);
        w[k] = kGlobal ? __ldg(a) : *a;
      } else {
        const unsigned short* a = reinterpret_cast<const unsigned short*>(p);
        const uint32_t x = kGlobal ? __ldg(a) : *a;
        w[0] = (x & 0xffu) | ((x & 0xff00u) << 8);
      }
    }
  }
  __device__ static void zero(uint32_t (&w)[kWords]) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = 0;
  }
};

// Dequantizes a slice into fp16 (bf16 for kBf16) pairs in Slice::pair order.
//   scale[k]: per-piece scale (int8, int4, and with mins[k] int4-asym, int2; a piece lies in
//   one 32-channel block); kivi: sm = (scale, min) per token (values) or
//   per pair of channels in cs/cm (keys). fp8 is left unscaled (its per-head scale is applied
//   to scores and outputs in fp32). kCodes (KIVI keys whose scales and mins the query
//   carries, Kernel::fold_key_meta): the codes themselves, as exact fp16 integers.
template <KvFormat F, int N, int NL, bool kCodes = false>
struct Dequant {
  using S = Slice<F, N, NL>;
  __device__ static void run(const uint32_t (&w)[S::kWords], const __half2* scale,
                             const __half2* mins, const __half2* cs, const __half2* cm,
                             __half2 sm_scale, __half2 sm_min, uint32_t (&out)[S::kPairs]) {
    static_assert(!is_block(F) || 32 % S::kE == 0, "a piece must lie in one 32-channel block");
    if constexpr (F == KvFormat::kFp16 || F == KvFormat::kBf16) {
#pragma unroll
      for (int p = 0; p < S::kPairs; ++p) out[p] = w[p];
    } else if constexpr (F == KvFormat::kFp8) {
#pragma unroll
      for (int p = 0; p < S::kPairs; ++p) {
        __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(
            static_cast<__nv_fp8x2_storage_t>((w[p / 2] >> (16 * (p % 2))) & 0xffff), __NV_E4M3);
        out[p] = uint32_t(h.x) | (uint32_t(h.y) << 16);
      }
    } else if constexpr (F == KvFormat::kInt8) {
      const __half2 bias = __float2half2_rn(1152.f);  // 1024 + 128: the code's sign bit flipped
#pragma unroll
      for (int j = 0; j < S::kWords; ++j) {
        const uint32_t u = w[j] ^ 0x80808080u;
        const __half2 d = scale[(j * 4) / S::kE];
        out[2 * j] =
            as_u32(__hmul2(__hsub2(u32_as_h2(__byte_perm(u, 0x64646464u, 0x4140)), bias), d));
        out[2 * j + 1] =
            as_u32(__hmul2(__hsub2(u32_as_h2(__byte_perm(u, 0x64646464u, 0x4342)), bias), d));
      }
    } else {
      constexpr int kBits = S::kBits, kPerWord = codes::pairs_per_word(kBits);
#pragma unroll
      for (int j = 0; j < S::kWords; ++j) {
        const uint32_t high = w[j] >> 8;  // bytes 1 and 3: one shift per word (code_pairs.h)
#pragma unroll
        for (int i = 0; i < kPerWord && j * kPerWord + i < S::kPairs; ++i) {
          const int p = j * kPerWord + i;
          // q4_0 stores q + 8: its base absorbs the offset (exact in fp16).
          constexpr uint32_t kOffset = F == KvFormat::kInt4 ? 8u : 0u;
          const __half2 c = __hsub2(
              u32_as_h2(lop3_and_or(codes::pair_high_bytes(kBits, i) ? high : w[j],
                                    codes::pair_mask(kBits, i), codes::pair_magic(kBits, i))),
              u32_as_h2(codes::pair_base_bits(kBits, i, kOffset)));
          if constexpr (kCodes) {
            static_assert(is_kivi(F), "only KIVI keys fold their scales into the query");
            out[p] = as_u32(c);
          } else if constexpr (F == KvFormat::kInt4) {
            out[p] = as_u32(__hmul2(c, scale[(j * 8) / S::kE]));
          } else if constexpr (has_min(F)) {
            const int k = (j * (32 / kBits)) / S::kE;  // the word's piece
            out[p] = as_u32(__hfma2(c, scale[k], mins[k]));
          } else if (cs) {
            out[p] = as_u32(__hfma2(c, cs[p], cm[p]));
          } else {
            out[p] = as_u32(__hfma2(c, sm_scale, sm_min));
          }
        }
      }
    }
  }
};

// Full-precision fp16 row slice (KIVI residual ring) emitted in the format's pair order.
// KIVI's key and value slices are one piece each (N contiguous channels from who * N), read
// as 16-byte vectors: the ring's window is read by the last split alone, so its loads are on
// the kernel's critical path.
template <KvFormat F, int N, int NL>
__device__ __forceinline__ void ring_pairs(const __half* row, int who, uint32_t (&out)[N / 2]) {
  using S = Slice<F, N, NL>;
  static_assert(S::kPieces == 1 && N % 8 == 0, "a KIVI slice is one piece of whole vectors");
  const uint4* v = reinterpret_cast<const uint4*>(row + who * N);
  uint32_t w[N / 2];  // halves 2i, 2i + 1 in word i
#pragma unroll
  for (int i = 0; i < N / 8; ++i) {
    const uint4 x = __ldg(v + i);
    w[4 * i] = x.x, w[4 * i + 1] = x.y, w[4 * i + 2] = x.z, w[4 * i + 3] = x.w;
  }
#pragma unroll
  for (int p = 0; p < N / 2; ++p) {
    const int2 e = S::pair(p);  // one PRMT: half e.x low, half e.y high
    out[p] =
        __byte_perm(w[e.x / 2], w[e.y / 2], (e.x % 2 ? 0x32 : 0x10) | (e.y % 2 ? 0x7600 : 0x5400));
  }
}

// ---- The decode kernel -------------------------------------------------------------------
// Lane l = 4 * r + m. Scores: lane holds head r at tile tokens {2m, 2m+1, 8+2m, 9+2m}.
// Keys: lane loads tile tokens r and 8 + r, slice m of 4 (D/4 channels). Values: lane loads
// tile tokens {2m, 2m+1, 8+2m, 9+2m}, slice r of 8 (D/8 channels); its output fragment holds
// heads 2m, 2m+1 at the channels of pair i of that slice (two per M tile i).
template <KvFormat F, int D>
struct Kernel {
  static constexpr bool kBf16 = F == KvFormat::kBf16;
  static constexpr bool kKivi = F == KvFormat::kKivi2 || F == KvFormat::kKivi4;
  static constexpr bool kPerTokenScale = is_block(F);
  using KS = Slice<F, D / 4, 4>;
  using VS = Slice<F, D / 8, 8>;
  static constexpr int kChunks = D / 16;  // k-chunks of the score mma
  static constexpr int kMTiles = D / 16;  // M tiles of the output mma (= VS::kPairs)
  static constexpr int kRowBytes = D * kBitsOf<F> / 8;

  struct State {
    float m = -INFINITY, l = 0.f;  // head r
    float acc[kMTiles][4];         // O^T fragments
  };

  // Per-piece fp16 scales (and mins) of a token (the block formats).
  template <class Sl>
  __device__ static void piece_scales(const void* meta, size_t row, int who,
                                      __half2 (&sc)[Sl::kPieces], __half2 (&mn)[Sl::kPieces]) {
    constexpr int kMeta = has_min(F) ? 2 : 1;  // fp16 values per block
    const __half* h = static_cast<const __half*>(meta) + row * (D / 32) * kMeta;
#pragma unroll
    for (int k = 0; k < Sl::kPieces; ++k) {
      const int blk = Sl::channel(who, k * Sl::kE) / 32;
      sc[k] = __half2half2(h[blk * kMeta]);
      if constexpr (has_min(F)) mn[k] = __half2half2(h[blk * kMeta + 1]);
    }
  }

  __device__ static void kivi_token_meta(const void* meta, size_t row, int channel, int group,
                                         __half2& s, __half2& mn) {
    const __half* h = static_cast<const __half*>(meta) + (row * (D / group) + channel / group) * 2;
    s = __half2half2(h[0]), mn = __half2half2(h[1]);
  }

  // Per-channel (scale, min) of a page for key slice m, in pair order, from its [2][D] halves
  // (the scale row, then the min row) in global (kGlobal) or shared memory. KIVI key slices
  // are at most 16 bytes, so one piece: channels m*N .. m*N + N - 1, read as 16-byte rows.
  template <bool kGlobal>
  __device__ static void kivi_key_meta_rows(const __half* rows, int m, __half2 (&cs)[KS::kPairs],
                                            __half2 (&cm)[KS::kPairs]) {
    static_assert(KS::kPieces == 1, "KIVI key slices are one piece");
    constexpr int N = D / 4;
    const uint4* base = reinterpret_cast<const uint4*>(rows + m * N);
    __half s[N], mn[N];
#pragma unroll
    for (int v = 0; v < N / 8; ++v) {
      const uint4 a = kGlobal ? __ldg(base + v) : base[v];
      const uint4 c = kGlobal ? __ldg(base + D / 8 + v) : base[D / 8 + v];
      const __half* ah = reinterpret_cast<const __half*>(&a);
      const __half* ch = reinterpret_cast<const __half*>(&c);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[8 * v + i] = ah[i], mn[8 * v + i] = ch[i];
    }
#pragma unroll
    for (int p = 0; p < KS::kPairs; ++p) {
      const int2 e = KS::pair(p);
      cs[p] = __halves2half2(s[e.x], s[e.y]);
      cm[p] = __halves2half2(mn[e.x], mn[e.y]);
    }
  }
  __device__ static void kivi_key_meta(const void* meta, size_t slab, int m,
                                       __half2 (&cs)[KS::kPairs], __half2 (&cm)[KS::kPairs]) {
    kivi_key_meta_rows<true>(static_cast<const __half*>(meta) + slab * 2 * D, m, cs, cm);
  }

  // KIVI keys are k_c = code_c * s_c + min_c with (s, min) per channel over a page, so a
  // head's score over the page is sum_c (q_c s_c) code_c + sum_c q_c min_c: the scales go
  // into the query once per page (qk), the mins become one score offset per head (bias), and
  // a tile's key fragments are the bare codes. This saves an HFMA2 per key pair for 16 HMUL2
  // and 8 mma per page. bias is the mma of the query against the min row, repeated in every
  // column of B, so each lane receives its head r's offset in o[0] (and o[1]).
  __device__ static void fold_key_meta(const uint32_t (&qf)[kChunks][2],
                                       const __half2 (&cs)[KS::kPairs],
                                       const __half2 (&cm)[KS::kPairs], uint32_t (&qk)[kChunks][2],
                                       float& bias) {
    float o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) qk[j][h] = as_u32(__hmul2(u32_as_h2(qf[j][h]), cs[2 * j + h]));
      const uint32_t a[4] = {qf[j][0], 0u, qf[j][1], 0u};
      mma16816<false>(o, a, as_u32(cm[2 * j]), as_u32(cm[2 * j + 1]));
    }
    bias = o[0];
  }

  // ---- v3 (multi-tile) helpers ----
  // Tiles per step, so that one step of a warp has about 4 KB or more of loads in flight.
  static constexpr int kTilesPerStep = kBitsOf<F> == 16 ? 1 : (kBitsOf<F> == 8 ? 2 : 4);

  // One tile's raw loads: key rows r and 8 + r (slice m), value rows 2m, 2m+1, 8+2m, 9+2m
  // (slice r), their block scales and mins, KIVI values' (scale, min) per token as one word,
  // and for KIVI this lane's 16 bytes of the page's key metadata.
  struct TileRaw {
    uint32_t kw[2][KS::kWords], vw[4][VS::kWords];
    __half2 ksc[2][KS::kPieces], vsc[4][VS::kPieces];
    __half2 kmn[2][KS::kPieces], vmn[4][VS::kPieces];
    uint32_t vsm[4];
    bool present[4];
    uint4 kmeta;
    int page;
  };

  // tile < 0: nothing to load (zeros, nothing present).
  __device__ static void load_tile(TileRaw& t, const PagedKv& kv, const int* table, int kv_heads,
                                   int kvh, int tile, int main_end, int r, int m, int lane) {
    const int t0 = tile * kTile, page = tile < 0 ? -1 : t0 / kv.page_size;
    t.page = page;
    const size_t slab = tile < 0 ? 0 : size_t(table[page]) * kv_heads + kvh;
    const size_t row0 = slab * kv.page_size + (tile < 0 ? 0 : t0 % kv.page_size);
    if constexpr (kKivi) {
      if (tile >= 0 && lane < D / 4)
        t.kmeta = __ldg(
            reinterpret_cast<const uint4*>(static_cast<const __half*>(kv.k_meta) + slab * 2 * D) +
            lane);
    }
    const int live = tile < 0 ? 0 : main_end - t0;  // rows of the tile before main_end
    fill_rows<true, kRowBytes, kRowBytes>(
        t, static_cast<const char*>(kv.k_data) + row0 * kRowBytes,
        static_cast<const char*>(kv.v_data) + row0 * kRowBytes, kv.k_meta, kv.v_meta, row0,
        reinterpret_cast<const uint32_t*>(kv.v_meta) + row0 * (D / kv.page_size), kv.page_size,
        live, r, m);
  }

  // A tile's rows into t: key row i at k_rows + i * KP (slice m of rows r and 8 + r), value
  // row i at v_rows + i * VP (slice r of rows 2m, 2m+1, 8+2m, 9+2m), the block
  // scales of row meta_row + i of k_meta and v_meta, KIVI's (scale, min) word of value row i
  // at v_words + i * (D / P); rows from `live` on are zeros and absent. From global memory
  // through the read-only path (kGlobal: v3's load_tile) or from a stage (v4's read_tile).
  template <bool kGlobal, int KP, int VP>
  __device__ static void fill_rows(TileRaw& t, const char* k_rows, const char* v_rows,
                                   const void* k_meta, const void* v_meta, size_t meta_row,
                                   const uint32_t* v_words, int P, int live, int r, int m) {
    const __half2 zero2 = __float2half2_rn(0.f);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = h * 8 + r;
      if (i < live) {
        KS::template load<kGlobal>(k_rows + i * KP, m, t.kw[h]);
        if constexpr (kPerTokenScale) piece_scales<KS>(k_meta, meta_row + i, m, t.ksc[h], t.kmn[h]);
      } else {
        KS::zero(t.kw[h]);
#pragma unroll
        for (int k = 0; k < KS::kPieces; ++k) t.ksc[h][k] = t.kmn[h][k] = zero2;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = 2 * m + (j & 1) + 8 * (j >> 1);
      t.present[j] = i < live;
      t.vsm[j] = 0u;
      if (t.present[j]) {
        VS::template load<kGlobal>(v_rows + i * VP, r, t.vw[j]);
        if constexpr (kPerTokenScale) piece_scales<VS>(v_meta, meta_row + i, r, t.vsc[j], t.vmn[j]);
        if constexpr (kKivi) {
          const uint32_t* word = v_words + i * (D / P) + VS::channel(r, 0) / P;
          t.vsm[j] = kGlobal ? __ldg(word) : *word;
        }
      } else {
        VS::zero(t.vw[j]);
#pragma unroll
        for (int k = 0; k < VS::kPieces; ++k) t.vsc[j][k] = t.vmn[j][k] = zero2;
      }
    }
  }

  // ---- v4 (staged) helpers ----
  // A warp copies a tile's 16 key and value rows and their metadata into a stage of shared
  // memory by cp.async, kStages - 1 tiles ahead of the one it computes, so its loads are in
  // flight while it computes without holding registers (v3 holds them: 200-255 registers at
  // head_dim 128, two blocks per multiprocessor). A tile's rows are consecutive in its page,
  // so each part is one contiguous run of 16-byte pieces in global memory. Stage layout: key
  // rows, value rows, key metadata (block formats: 16 rows of block scales; KIVI: the page's
  // [2][D] key scales and mins, copied with the tiles where the warp first reads a page),
  // value metadata (block formats: 16 rows; KIVI: 16 tokens' (scale, min) per value group,
  // sized for the smallest group, 16). Rows are padded where their reads would otherwise
  // share banks (key rows of 128 bytes by 64: a quarter warp reads two of them; value rows of
  // 32 bytes and more by 16: lanes read rows two apart): no conflicts left for any format.
  static constexpr int kKeyPitch = kRowBytes + (kRowBytes >= 128 ? 64 : 0);
  static constexpr int kValuePitch = kRowBytes + (kRowBytes >= 32 ? 16 : 0);
  static constexpr int kMetaRowBytes = is_block(F) ? (D / 32) * (has_min(F) ? 4 : 2) : 0;
  static constexpr int kKeyMetaBytes = kKivi ? 4 * D : kTile * kMetaRowBytes;
  static constexpr int kValueMetaBytes = kKivi ? kTile * (D / 16) * 4 : kTile * kMetaRowBytes;
  static constexpr int kOffV = kTile * kKeyPitch, kOffKM = kOffV + kTile * kValuePitch;
  static constexpr int kOffVM = kOffKM + kKeyMetaBytes;
  static constexpr int kStageBytes = kOffVM + kValueMetaBytes;
  // Three stages where they fit beside nothing else (4- and 2-bit codes), two for 8-bit.
  static constexpr int kStages = kBitsOf<F> <= 4 ? 3 : 2;
  static_assert(kRowBytes % 16 == 0 && kMetaRowBytes * kTile % 16 == 0, "16-byte pieces");

  // bytes (a multiple of 16) from `src` to `dst`, the warp's lanes taking 16 bytes in turn;
  // rows of `row` bytes land `pitch` bytes apart.
  template <int kRow = 16, int kPitch = kRow>
  __device__ static void copy_async(unsigned char* dst, const void* src, int bytes, int lane) {
    for (int o = 16 * lane; o < bytes; o += 16 * 32)
      mma::cp_async16(dst + (o / kRow) * kPitch + o % kRow,
                      static_cast<const unsigned char*>(src) + o);
  }

  // Issues the copies of tile `tile` into stage `st` (no commit); with `key_meta`, KIVI's page
  // key metadata too. Rows of the tile's page past the sequence are copied too (they are in the
  // pool) and ignored by read_tile.
  __device__ static void stage_tile(unsigned char* st, const PagedKv& kv, const int* table,
                                    int kv_heads, int kvh, int tile, bool key_meta, int lane) {
    const int P = kv.page_size, t0 = tile * kTile;
    const size_t slab = size_t(table[t0 / P]) * kv_heads + kvh;
    const size_t row0 = slab * P + t0 % P;
    copy_async<kRowBytes, kKeyPitch>(st, static_cast<const char*>(kv.k_data) + row0 * kRowBytes,
                                     kTile * kRowBytes, lane);
    copy_async<kRowBytes, kValuePitch>(st + kOffV,
                                       static_cast<const char*>(kv.v_data) + row0 * kRowBytes,
                                       kTile * kRowBytes, lane);
    if constexpr (kPerTokenScale) {
      copy_async(st + kOffKM, static_cast<const char*>(kv.k_meta) + row0 * kMetaRowBytes,
                 kTile * kMetaRowBytes, lane);
      copy_async(st + kOffVM, static_cast<const char*>(kv.v_meta) + row0 * kMetaRowBytes,
                 kTile * kMetaRowBytes, lane);
    }
    if constexpr (kKivi) {
      if (key_meta)
        copy_async(st + kOffKM, static_cast<const char*>(kv.k_meta) + slab * 4 * D, 4 * D, lane);
      copy_async(st + kOffVM, static_cast<const char*>(kv.v_meta) + row0 * (D / P) * 4,
                 kTile * (D / P) * 4, lane);
    }
  }

  // What load_tile reads from global memory, read from a stage (t.kmeta and t.page unused).
  __device__ static void read_tile(TileRaw& t, const unsigned char* st, int P, int tile,
                                   int main_end, int r, int m) {
    const char* rows = reinterpret_cast<const char*>(st);
    fill_rows<false, kKeyPitch, kValuePitch>(t, rows, rows + kOffV, st + kOffKM, st + kOffVM, 0,
                                             reinterpret_cast<const uint32_t*>(st + kOffVM), P,
                                             main_end - tile * kTile, r, m);
  }

  // S = Q K^T for the tile's two halves, then the online-softmax update and O += P V.
  // kf[h]: key pairs of tile token h * 8 + r; vf[j]: value pairs of the lane's 4 tokens;
  // bias: added to head r's scores (fold_key_meta).
  __device__ static void tile_step(State& st, const uint32_t (&qf)[kChunks][2],
                                   uint32_t (&kf)[2][KS::kPairs], uint32_t (&vf)[4][VS::kPairs],
                                   const bool (&present)[4], float score_scale, int lane,
                                   float bias = 0.f) {
    float s[2][4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      s[h][0] = s[h][1] = bias, s[h][2] = s[h][3] = 0.f;
#pragma unroll
      for (int j = 0; j < kChunks; ++j) {
        const uint32_t a[4] = {qf[j][0], 0u, qf[j][1], 0u};
        mma16816<kBf16>(s[h], a, kf[h][2 * j], kf[h][2 * j + 1]);
      }
    }
    // This lane's scores: head r, tokens 2m, 2m+1 (half 0) and 8+2m, 9+2m (half 1).
    float x[4] = {s[0][0], s[0][1], s[1][0], s[1][1]};
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[i] = present[i] ? x[i] * score_scale : -INFINITY;
      mx = fmaxf(mx, x[i]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(st.m, mx);
    const float base = m_new == -INFINITY ? 0.f : m_new;
    const float alpha = fast_exp2(st.m - base);
    st.m = m_new;
    float p[4];
    st.l *= alpha;
#pragma unroll
    for (int i = 0; i < 4; ++i) st.l += (p[i] = fast_exp2(x[i] - base));
    // The output fragment holds heads 2m and 2m+1: fetch their alphas from lanes 8m and 8m+4.
    const int m = lane & 3;
    const float a0 = __shfl_sync(0xffffffffu, alpha, 8 * m),
                a1 = __shfl_sync(0xffffffffu, alpha, 8 * m + 4);
    uint32_t pb0, pb1;
    if constexpr (kBf16) {
      pb0 = as_u32(__floats2bfloat162_rn(p[0], p[1])),
      pb1 = as_u32(__floats2bfloat162_rn(p[2], p[3]));
    } else {
      pb0 = as_u32(__floats2half2_rn(p[0], p[1])), pb1 = as_u32(__floats2half2_rn(p[2], p[3]));
    }
#pragma unroll
    for (int i = 0; i < kMTiles; ++i) {
      st.acc[i][0] *= a0, st.acc[i][1] *= a1, st.acc[i][2] *= a0, st.acc[i][3] *= a1;
      // A = V^T: rows r / r+8 are the two channels of pair i, columns the lane's tokens.
      const uint32_t a[4] = {
          __byte_perm(vf[0][i], vf[1][i], 0x5410), __byte_perm(vf[0][i], vf[1][i], 0x7632),
          __byte_perm(vf[2][i], vf[3][i], 0x5410), __byte_perm(vf[2][i], vf[3][i], 0x7632)};
      mma16816<kBf16>(st.acc[i], a, pb0, pb1);
    }
  }
};

// kNT: v3's tiles per step (0: the format's default, K::kTilesPerStep). kStaged: the v4 loop
// (kMulti false). The body of the kernels, which differ only in their launch bounds.
template <KvFormat F, int D, bool kMulti, int kNT = 0, bool kStaged = false>
__device__ __forceinline__ void decode_body(DecodeProblem pr, PagedKv kv, int num_splits,
                                            float* ws) {
  using K = Kernel<F, D>;
  using KS = typename K::KS;
  using VS = typename K::VS;
  constexpr bool kKivi = K::kKivi;
  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 2, m = lane & 3;
  const int P = kv.page_size, gq = pr.q_heads / pr.kv_heads;
  const int T = pr.seq_lens[b];
  const int seq_row = pr.seq_rows ? pr.seq_rows[b] : b;      // its ring and scale row
  const int key_end = kKivi ? T - T % kv.residual : T;       // keys before: from pages
  const int main_end = kKivi ? max(0, T - kv.residual) : T;  // values before: from pages
  float score_scale = pr.softmax_scale * kLog2e;
  float out_scale = 1.f;
  if constexpr (F == KvFormat::kFp8)
    score_scale *= kv.k_head_scale[size_t(seq_row) * pr.kv_heads + kvh],
        out_scale = kv.v_head_scale[size_t(seq_row) * pr.kv_heads + kvh];

  // Query fragments (A of the score mma): head r, the channels of key slice m in pair order.
  uint32_t qf[K::kChunks][2];
  {
    const size_t qrow = (size_t(b) * pr.q_heads + kvh * gq + min(r, gq - 1)) * D;
#pragma unroll
    for (int j = 0; j < K::kChunks; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int2 e = KS::pair(2 * j + h);
        const int c0 = KS::channel(m, e.x), c1 = KS::channel(m, e.y);
        uint32_t v;
        if constexpr (K::kBf16) {
          const __nv_bfloat16* q = static_cast<const __nv_bfloat16*>(pr.q) + qrow;
          v = as_u32(__halves2bfloat162(q[c0], q[c1]));
        } else {
          const __half* q = static_cast<const __half*>(pr.q) + qrow;
          v = as_u32(__halves2half2(q[c0], q[c1]));
        }
        qf[j][h] = r < gq ? v : 0u;
      }
  }

  typename K::State st;
#pragma unroll
  for (int i = 0; i < K::kMTiles; ++i)
    st.acc[i][0] = st.acc[i][1] = st.acc[i][2] = st.acc[i][3] = 0.f;

  const int* table = pr.block_table + size_t(b) * pr.max_pages_per_seq;
  const char* kdata = static_cast<const char*>(kv.k_data);
  const char* vdata = static_cast<const char*>(kv.v_data);
  const int tiles_main = (main_end + kTile - 1) / kTile;
  const int per_split = (tiles_main + num_splits - 1) / num_splits;
  const int tile_begin = split * per_split, tile_end = min(tiles_main, tile_begin + per_split);
  const __half2 zero2 = __float2half2_rn(0.f);
  int kivi_page = -1;
  __half2 cs[kKivi ? KS::kPairs : 1], cm[kKivi ? KS::kPairs : 1];

  if constexpr (kMulti) {
    // v3: each warp a contiguous run of the split's tiles (KIVI key metadata is per page),
    // NT tiles per step with all their loads issued before any is computed.
    const int per_warp = (max(0, tile_end - tile_begin) + kWarps - 1) / kWarps;
    const int warp_begin = tile_begin + warp * per_warp,
              warp_end = min(tile_end, warp_begin + per_warp);
    // A page's KIVI key meta per warp: [2][D] halves (scales, then mins), D / 4 vectors.
    __shared__ uint4 sm_kmeta[kKivi ? kWarps : 1][kKivi ? D / 4 : 1];
    uint32_t qk[K::kChunks][2];  // KIVI: the query times the page's key scales
    float kbias = 0.f;           // KIVI: head r's sum of query times the page's key mins
    constexpr int NT = kNT > 0 ? kNT : K::kTilesPerStep;
    for (int tile = warp_begin; tile < warp_end; tile += NT) {
      typename K::TileRaw raw[NT];
#pragma unroll
      for (int n = 0; n < NT; ++n)
        K::load_tile(raw[n], kv, table, pr.kv_heads, kvh, tile + n < warp_end ? tile + n : -1,
                     main_end, r, m, lane);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        if (tile + n >= warp_end) break;
        if constexpr (kKivi) {
          if (raw[n].page != kivi_page) {
            __syncwarp();
            if (lane < D / 4) sm_kmeta[warp][lane] = raw[n].kmeta;
            __syncwarp();
            __half2 pcs[KS::kPairs], pcm[KS::kPairs];
            K::template kivi_key_meta_rows<false>(reinterpret_cast<const __half*>(sm_kmeta[warp]),
                                                  m, pcs, pcm);
            K::fold_key_meta(qf, pcs, pcm, qk, kbias);
            kivi_page = raw[n].page;
          }
        }
        uint32_t kf[2][KS::kPairs], vf[4][VS::kPairs];
#pragma unroll
        for (int h = 0; h < 2; ++h)
          Dequant<F, D / 4, 4, kKivi>::run(raw[n].kw[h], raw[n].ksc[h], raw[n].kmn[h], nullptr,
                                           nullptr, zero2, zero2, kf[h]);
#pragma unroll
        for (int j = 0; j < 4; ++j)
          Dequant<F, D / 8, 8>::run(raw[n].vw[j], raw[n].vsc[j], raw[n].vmn[j], nullptr, nullptr,
                                    __low2half2(u32_as_h2(raw[n].vsm[j])),
                                    __high2half2(u32_as_h2(raw[n].vsm[j])), vf[j]);
        if constexpr (kKivi)
          K::tile_step(st, qk, kf, vf, raw[n].present, score_scale, lane, kbias);
        else
          K::tile_step(st, qf, kf, vf, raw[n].present, score_scale, lane);
      }
    }
  }

  float(*sm_acc)[8][D];  // the warps' partial outputs, merged at the end
  if constexpr (kStaged) {
    // v4: each warp a contiguous run of the split's tiles, as v3, each tile staged through
    // shared memory (Kernel::stage_tile) kStages - 1 tiles ahead.
    static_assert(!kMulti, "v4 is its own loop");
    constexpr int S = K::kStages;
    __shared__ uint4 sm_stage[(kWarps * S * K::kStageBytes + 15) / 16];
    static_assert(sizeof(sm_stage) >= sizeof(float) * kWarps * 8 * D, "the merge area");
    unsigned char* mine =
        reinterpret_cast<unsigned char*>(sm_stage) + size_t(warp) * S * K::kStageBytes;
    const int per_warp = (max(0, tile_end - tile_begin) + kWarps - 1) / kWarps;
    const int warp_begin = tile_begin + warp * per_warp,
              warp_end = min(tile_end, warp_begin + per_warp);
    uint32_t qk[K::kChunks][2];  // KIVI: the query times the page's key scales
    float kbias = 0.f;           // KIVI: head r's sum of query times the page's key mins
#pragma unroll
    for (int s = 0; s < S - 1; ++s) {
      if (warp_begin + s < warp_end)
        K::stage_tile(mine + s * K::kStageBytes, kv, table, pr.kv_heads, kvh, warp_begin + s,
                      s == 0 || (warp_begin + s) * kTile % P == 0, lane);
      mma::cp_async_commit();
    }
    for (int tile = warp_begin, k = 0; tile < warp_end; ++tile, ++k) {
      if (tile + S - 1 < warp_end)
        K::stage_tile(mine + ((k + S - 1) % S) * K::kStageBytes, kv, table, pr.kv_heads, kvh,
                      tile + S - 1, (tile + S - 1) * kTile % P == 0, lane);
      mma::cp_async_commit();
      mma::cp_async_wait<S - 1>();  // this tile's group has landed
      __syncwarp();
      const unsigned char* stage = mine + (k % S) * K::kStageBytes;
      if constexpr (kKivi) {
        const int page = tile * kTile / P;
        if (page != kivi_page) {
          __half2 pcs[KS::kPairs], pcm[KS::kPairs];
          K::template kivi_key_meta_rows<false>(reinterpret_cast<const __half*>(stage + K::kOffKM),
                                                m, pcs, pcm);
          K::fold_key_meta(qf, pcs, pcm, qk, kbias);
          kivi_page = page;
        }
      }
      typename K::TileRaw raw;
      K::read_tile(raw, stage, P, tile, main_end, r, m);
      uint32_t kf[2][KS::kPairs], vf[4][VS::kPairs];
#pragma unroll
      for (int h = 0; h < 2; ++h)
        Dequant<F, D / 4, 4, kKivi>::run(raw.kw[h], raw.ksc[h], raw.kmn[h], nullptr, nullptr, zero2,
                                         zero2, kf[h]);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        Dequant<F, D / 8, 8>::run(raw.vw[j], raw.vsc[j], raw.vmn[j], nullptr, nullptr,
                                  __low2half2(u32_as_h2(raw.vsm[j])),
                                  __high2half2(u32_as_h2(raw.vsm[j])), vf[j]);
      if constexpr (kKivi)
        K::tile_step(st, qk, kf, vf, raw.present, score_scale, lane, kbias);
      else
        K::tile_step(st, qf, kf, vf, raw.present, score_scale, lane);
      __syncwarp();  // every lane has read the stage before it is refilled
    }
    mma::cp_async_wait<0>();  // nothing in flight: the stages become the merge area (below)
    sm_acc = reinterpret_cast<float(*)[8][D]>(sm_stage);
  } else {
    __shared__ float sm_acc_own[kWarps][8][D];
    sm_acc = sm_acc_own;
  }

  for (int tile = tile_begin + warp; !kMulti && !kStaged && tile < tile_end; tile += kWarps) {
    const int t0 = tile * kTile, page = t0 / P;
    const size_t slab = size_t(table[page]) * pr.kv_heads + kvh;
    const size_t row0 = slab * P + t0 % P;  // row of the tile's first token in the pool
    if constexpr (kKivi) {
      if (page != kivi_page) K::kivi_key_meta(kv.k_meta, slab, m, cs, cm), kivi_page = page;
    }
    uint32_t kw[2][KS::kWords], vw[4][VS::kWords];
    __half2 ksc[2][KS::kPieces], vsc[4][VS::kPieces], vs_s[4], vs_m[4];
    __half2 kmn[2][KS::kPieces], vmn[4][VS::kPieces];  // block mins (int4-asym, int2)
    bool kpresent[2], present[4];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = h * 8 + r;
      kpresent[h] = t0 + i < main_end;
      if (kpresent[h]) {
        KS::load(kdata + (row0 + i) * K::kRowBytes, m, kw[h]);
        if constexpr (K::kPerTokenScale)
          K::template piece_scales<KS>(kv.k_meta, row0 + i, m, ksc[h], kmn[h]);
      } else {
        KS::zero(kw[h]);
#pragma unroll
        for (int k = 0; k < KS::kPieces; ++k) ksc[h][k] = kmn[h][k] = zero2;
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int i = 2 * m + (j & 1) + 8 * (j >> 1);
      present[j] = t0 + i < main_end;
      vs_s[j] = vs_m[j] = zero2;
      if (present[j]) {
        VS::load(vdata + (row0 + i) * K::kRowBytes, r, vw[j]);
        if constexpr (K::kPerTokenScale)
          K::template piece_scales<VS>(kv.v_meta, row0 + i, r, vsc[j], vmn[j]);
        if constexpr (kKivi)
          K::kivi_token_meta(kv.v_meta, row0 + i, VS::channel(r, 0), P, vs_s[j], vs_m[j]);
      } else {
        VS::zero(vw[j]);
#pragma unroll
        for (int k = 0; k < VS::kPieces; ++k) vsc[j][k] = vmn[j][k] = zero2;
      }
    }
    uint32_t kf[2][KS::kPairs], vf[4][VS::kPairs];
#pragma unroll
    for (int h = 0; h < 2; ++h)
      Dequant<F, D / 4, 4>::run(kw[h], ksc[h], kmn[h], kKivi ? cs : nullptr, cm, zero2, zero2,
                                kf[h]);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      Dequant<F, D / 8, 8>::run(vw[j], vsc[j], vmn[j], nullptr, nullptr, vs_s[j], vs_m[j], vf[j]);
    K::tile_step(st, qf, kf, vf, present, score_scale, lane);
  }

  if constexpr (kKivi) {
    // The full-precision window [main_end, T), on the last split: keys before key_end are
    // still quantized, the rest and every value come from the rings (slot t mod R).
    if (split == num_splits - 1) {
      const size_t ring = (size_t(seq_row) * pr.kv_heads + kvh) * kv.residual;
      const __half* kring = static_cast<const __half*>(kv.k_residual);
      const __half* vring = static_cast<const __half*>(kv.v_residual);
      for (int t0 = (main_end / kTile + warp) * kTile; t0 < T; t0 += kWarps * kTile) {
        const int page = t0 / P;
        const size_t slab = size_t(table[page]) * pr.kv_heads + kvh;
        uint32_t kf[2][KS::kPairs], vf[4][VS::kPairs];
        bool present[4];
        for (int h = 0; h < 2; ++h) {
          const int t = t0 + h * 8 + r;
          if (t < main_end || t >= T) {
#pragma unroll
            for (int p = 0; p < KS::kPairs; ++p) kf[h][p] = 0u;
          } else if (t < key_end) {
            __half2 tcs[KS::kPairs], tcm[KS::kPairs];
            K::kivi_key_meta(kv.k_meta, slab, m, tcs, tcm);
            uint32_t w[KS::kWords];
            KS::load(kdata + (slab * P + t % P) * K::kRowBytes, m, w);
            Dequant<F, D / 4, 4>::run(w, nullptr, nullptr, tcs, tcm, zero2, zero2, kf[h]);
          } else {
            ring_pairs<F, D / 4, 4>(kring + (ring + t % kv.residual) * D, m, kf[h]);
          }
        }
        for (int j = 0; j < 4; ++j) {
          const int t = t0 + 2 * m + (j & 1) + 8 * (j >> 1);
          present[j] = t >= main_end && t < T;
          if (present[j]) {
            ring_pairs<F, D / 8, 8>(vring + (ring + t % kv.residual) * D, r, vf[j]);
          } else {
#pragma unroll
            for (int p = 0; p < VS::kPairs; ++p) vf[j][p] = 0u;
          }
        }
        K::tile_step(st, qf, kf, vf, present, score_scale, lane);
      }
    }
  }

  // Row sums: the four lanes of head r each summed their own tokens.
  st.l += __shfl_xor_sync(0xffffffffu, st.l, 1);
  st.l += __shfl_xor_sync(0xffffffffu, st.l, 2);
  __shared__ float sm_ml[kWarps][8][2];
  if constexpr (kStaged) __syncthreads();  // every warp is done reading its stages
  if (m == 0) sm_ml[warp][r][0] = st.m, sm_ml[warp][r][1] = st.l;
#pragma unroll
  for (int i = 0; i < K::kMTiles; ++i) {
    const int2 e = VS::pair(i);
    const int c0 = VS::channel(r, e.x), c1 = VS::channel(r, e.y);
    sm_acc[warp][2 * m][c0] = st.acc[i][0], sm_acc[warp][2 * m + 1][c0] = st.acc[i][1];
    sm_acc[warp][2 * m][c1] = st.acc[i][2], sm_acc[warp][2 * m + 1][c1] = st.acc[i][3];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < gq * D; idx += kThreads) {
    const int g = idx / D, d = idx % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_ml[w][g][0]);
    float L = 0.f, O = 0.f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float a = fast_exp2(sm_ml[w][g][0] - M);
        L = fmaf(sm_ml[w][g][1], a, L);
        O = fmaf(sm_acc[w][g][d], a, O);
      }
    }
    O *= out_scale;
    const size_t head = size_t(b) * pr.q_heads + kvh * gq + g;
    if (num_splits == 1) {
      const float o = L > 0.f ? O / L : 0.f;
      if constexpr (K::kBf16)
        static_cast<__nv_bfloat16*>(pr.out)[head * D + d] = __float2bfloat16(o);
      else
        static_cast<__half*>(pr.out)[head * D + d] = __float2half(o);
    } else {
      float* part = ws + (head * num_splits + split) * (D + 2);
      part[2 + d] = O;
      if (d == 0) part[0] = M, part[1] = L;
    }
  }
}

template <bool kBf16Out>
__device__ __forceinline__ void combine_body(const float* ws, int num_splits, int D, void* out) {
  const size_t head = size_t(blockIdx.y) * gridDim.x + blockIdx.x;
  const float* part = ws + head * num_splits * (D + 2);
  float M = -INFINITY;
  for (int s = 0; s < num_splits; ++s) M = fmaxf(M, part[s * (D + 2)]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.f, O = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float* p = part + s * (D + 2);
      if (p[0] == -INFINITY) continue;
      const float a = fast_exp2(p[0] - M);
      L = fmaf(p[1], a, L);
      O = fmaf(p[2 + d], a, O);
    }
    const float o = L > 0.f ? O / L : 0.f;
    if constexpr (kBf16Out)
      static_cast<__nv_bfloat16*>(out)[head * D + d] = __float2bfloat16(o);
    else
      static_cast<__half*>(out)[head * D + d] = __float2half(o);
  }
}

// The loop a plan selects (decode_plan), as run(multi_tile, tiles_per_step, four_blocks, staged)
// with std::integral_constant arguments, so that the launcher and the emulating test
// instantiate the same kernels: v3 with two tiles per step is its own instantiation only where
// two is not the format's default; v2 at four blocks per multiprocessor is not built for KIVI,
// v4 (staged) not for the 16-bit formats. False, running nothing, for a loop not built.
template <KvFormat F, int D, class Run>
bool with_loop(const DecodePlan& plan, Run&& run) {
  using std::false_type;
  using std::true_type;
  using Zero = std::integral_constant<int, 0>;
  constexpr bool kOwnTwo = Kernel<F, D>::kTilesPerStep != 2;
  if (plan.staged) {
    if constexpr (kBitsOf<F> == 16)
      return false;
    else
      run(false_type{}, Zero{}, false_type{}, true_type{});
  } else if (plan.multi_tile && plan.tiles_per_step == 2 && kOwnTwo) {
    run(true_type{}, std::integral_constant < int, kOwnTwo ? 2 : 0 > {}, false_type{},
        false_type{});
  } else if (plan.multi_tile) {
    run(true_type{}, Zero{}, false_type{}, false_type{});
  } else if (plan.min_blocks == 4) {
    if constexpr (is_kivi(F))
      return false;
    else
      run(false_type{}, Zero{}, true_type{}, false_type{});
  } else {
    run(false_type{}, Zero{}, false_type{}, false_type{});
  }
  return true;
}

}  // namespace
}  // namespace kvbench::kernels::decode_device
