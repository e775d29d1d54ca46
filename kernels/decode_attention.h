// Paged decode attention over compressed KV caches (one query token per sequence), reading
// every format of kv_format.h directly: codes are dequantized in registers, never to memory.
//
// Work split (FlashDecoding): one block per (split, kv_head, sequence) handles all query
// heads of its GQA group so each K/V byte is read once; its warps take whole pages and keep
// an online softmax; a second kernel merges the splits when there is more than one.
// Plan/run: decode_plan() picks the split count and workspace size on the host (outside any
// timed region); decode_attention() only launches.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "kv_format.h"

namespace kvbench::kernels {

struct PagedKv {
  KvFormat format = KvFormat::kFp16;
  int page_size = 16;            // tokens per page (KIVI: its group G)
  const void* k_data = nullptr;  // see kv_format.h for each format's layout
  const void* v_data = nullptr;
  const void* k_meta = nullptr;
  const void* v_meta = nullptr;
  const float* k_head_scale = nullptr;  // kFp8: [rows, kv_heads] (DecodeProblem::seq_rows)
  const float* v_head_scale = nullptr;
  const void* k_residual = nullptr;  // KIVI: [rows, kv_heads, residual, head_dim] fp16
  const void* v_residual = nullptr;
  int residual = 0;  // KIVI's R, a multiple of page_size
};

struct DecodeProblem {
  int batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  int max_pages_per_seq = 0;         // block_table's row length
  int max_seq_len = 0;               // an upper bound of seq_lens, used to size the splits
  const int* block_table = nullptr;  // [batch, max_pages_per_seq] physical page ids (device)
  const int* seq_lens = nullptr;     // [batch] tokens per sequence, >= 1 (device)
  // [batch] each sequence's row in the KIVI rings and fp8 head scales (device); null: row b.
  // Lets a batch be any subset of a cache's sequences, in any order.
  const int* seq_rows = nullptr;
  float softmax_scale = 0.f;
  const void* q = nullptr;  // [batch, q_heads, head_dim] fp16 (bf16 for kBf16)
  void* out = nullptr;      // [batch, q_heads, head_dim] same dtype
};

struct DecodePlan {
  // Set by the caller before decode_plan(): the main loop. false: each warp computes one
  // 16-token tile at a time, tiles dealt round-robin (v2, measured in docs/perf-notes.md).
  // true: each warp takes a contiguous run of tiles and issues the loads of several (4 for
  // 4- and 2-bit codes, 2 for 8-bit, 1 for 16-bit) before computing any, KIVI key metadata
  // staged once per page (v3: prepared for the next GPU session, not yet measured).
  bool multi_tile = false;
  // v3 only: tiles whose loads a warp issues per step. 0: the format's default (above); 2: two
  // for every format ("v3h" in gpu_decode_bench, which measures which wins). For 4- and 2-bit
  // codes that is fewer registers than their default of 4, so more blocks per multiprocessor;
  // for 16-bit formats (default 1) it is more bytes in flight per warp at more registers.
  int tiles_per_step = 0;
  // v2 only: 0, or 4 for the loop built to run four blocks per multiprocessor (at most 128
  // registers a thread; "v2b" in gpu_decode_bench), its splits filling four blocks per
  // multiprocessor. Not for KIVI (refused: its v2 loop spills at that bound).
  int min_blocks = 0;
  // Neither of the above: each warp takes a contiguous run of tiles (as v3) and copies each
  // tile's rows and metadata into shared memory by cp.async two or three tiles ahead of the
  // one it computes, so its loads are in flight without holding registers ("v4"; the
  // quantized formats only; not yet measured).
  bool staged = false;
  int num_splits = 1;
  size_t workspace_bytes = 0;  // fp32 partials when num_splits > 1
};

// Validates the problem and chooses the splits: v2, enough blocks to fill `sm_count`
// multiprocessors twice (min_blocks 4: as many blocks as four per multiprocessor, rounded
// down), never fewer than 4 tiles of 16 tokens per warp; v3 (multi_tile) and v4 (staged),
// about 8 blocks per multiprocessor, never fewer than 8 tiles per warp. `force_splits` > 0
// overrides.
cudaError_t decode_plan(const DecodeProblem& problem, const PagedKv& kv, int sm_count,
                        int force_splits, DecodePlan* plan);

// Launches on `stream`. `workspace` holds plan.workspace_bytes (may be null when zero).
cudaError_t decode_attention(const DecodeProblem& problem, const PagedKv& kv,
                             const DecodePlan& plan, void* workspace, cudaStream_t stream);

// The reason the last decode_plan() rejected its input ("" when it did not).
const char* decode_last_error();

}  // namespace kvbench::kernels
