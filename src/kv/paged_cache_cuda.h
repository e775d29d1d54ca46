// The paged cache's GPU calls (private to src/kv): the appender, the decode kernels and the
// dequantizer of kernels/ on tensors that live on a CUDA device, on torch's current stream
// there (core/cuda_stream.h), so they queue in order with the torch ops around them. Built into
// every binary; where kvbench was built without the CUDA kernels each call on CUDA tensors throws
// Error saying so. decode, retained and dequantize also take CPU tensors (host pointers), and then
// run the kernels' host references: the paged cache's GPU path runs that way on the CPU in tests
// (PagedKVCache's kernel_path_on_cpu), so its tables, lists and scores are checked anywhere.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "gear_decode.h"
#include "head_project.h"
#include "kv_append.h"
#include "palu_decode.h"
#include "quest_score.h"
#include "steady_evict.h"
#include "thin_qr.h"

namespace kvbench::paged_cuda {

// Whether this build and libtorch can put a paged cache on `device`; the reason when not.
std::string unavailable_reason();

// The decode kernel's main loop for `format` under `spec` (KVBENCH_DECODE_LOOP's value): one
// loop for every format ("v2", "v2b", "v3", "v3h" or "v4": kernels/decode_attention.h's
// DecodePlan; "v2b" leaves KIVI on v2, "v4" fp16 and bf16), or a list "FORMAT=LOOP,..."
// (formats as kernels::format_name spells them; unlisted ones v2; "kivi-2=v2b" and "fp16=v4"
// refused); "" is v2. Throws Error naming what it cannot read.
std::string decode_loop_for(const std::string& spec, kernels::KvFormat format);

// The retained-index kernel's tokens per step (kernels::RetainedProblem::tokens_per_step) under
// `spec` (KVBENCH_RETAINED_TOKENS' value): "1", "2" or "4"; "" is 1. Throws Error otherwise.
int retained_tokens_for(const std::string& spec);

// Appends with every pointer of `problem` and `store` on `device`.
void append(const kernels::AppendProblem& problem, const kernels::PagedKvStore& store,
            const at::Device& device);

// A batch's decode-step inputs, int32 on the device.
struct DecodeBatch {
  at::Tensor table;     // [batch, max_pages] block tables
  at::Tensor seq_lens;  // [batch] tokens held, the new one included
  at::Tensor seq_rows;  // [batch] rows in the rings and fp8 scales
  int64_t max_len = 0;  // >= every seq_lens entry
};

// One decode step of a batch: q [batch, q_heads, head_dim] fp16 (bf16 for kBf16) on the
// device; returns [batch, q_heads, head_dim] in q's dtype.
at::Tensor decode(const kernels::PagedKvStore& store, const DecodeBatch& batch, int64_t kv_heads,
                  const at::Tensor& q);

// One decode step over each sequence's retained tokens (kernels/retained_decode.h), read in
// place by index: `lists` [batch] int64 device addresses of each sequence's [kv_heads, count]
// int32 listed positions, `counts_tails` [2 * batch] int32 (the counts, then the tail starts),
// both on the device; q [batch, q_heads, head_dim] fp32, fp16 or bf16; returns q's dtype and
// shape.
// `scores` defined ([batch, q_heads, n] fp32 on the device, n >= every kept count): each kept
// token's scaled score is written there, in the kept order (listed, then the tail).
at::Tensor retained(const kernels::PagedKvStore& store, const DecodeBatch& batch, int64_t kv_heads,
                    const at::Tensor& lists, const at::Tensor& counts_tails, const at::Tensor& q,
                    const at::Tensor& scores = at::Tensor());

// Palu's decode step (kernels/palu_decode.h) with every pointer of `problem` where `on` is:
// the CUDA kernel on a GPU, its host reference on the CPU. `max_len` >= the tokens every
// sequence attends (its length, or its kept count under a policy; palu_plan).
void palu(const kernels::PaluProblem& problem, int64_t max_len, const at::Tensor& on);

// GEAR's decode step (kernels/gear_decode.h) with every pointer of `problem` where `on` is: the
// CUDA kernel on a GPU, its host reference on the CPU. `max_len` >= every sequence length.
void gear(const kernels::GearProblem& problem, int64_t max_len, const at::Tensor& on);

// Quest's page scores (kernels/quest_score.h) with every pointer of `problem` where `on` is:
// the CUDA kernel on a GPU, its host reference on the CPU.
void quest_score(const kernels::QuestScoreProblem& problem, const at::Tensor& on);

// The pages each sequence's KV heads read, from their scores (kernels/quest_score.h's
// QuestSelectProblem), written as the retained-index kernel's lists where `on` is: the CUDA
// kernel on a GPU, its host reference on the CPU.
void quest_select(const kernels::QuestSelectProblem& problem, const at::Tensor& on);

// A decode step's keys folded into Quest's page bounds (kernels/quest_score.h's
// QuestFoldProblem), where `on` is: the CUDA kernel on a GPU, its host reference on the CPU.
void quest_fold(const kernels::QuestFoldProblem& problem, const at::Tensor& on);

// Each matrix of `problem` (kernels/thin_qr.h) replaced in place by its orthonormal columns,
// where `on` is: the CUDA kernel on a GPU, its host reference on the CPU.
void thin_qr(const kernels::ThinQrProblem& problem, const at::Tensor& on);

// A decode step's steady-state eviction at one layer (kernels/steady_evict.h) with every
// pointer of `problem` where `on` is: the CUDA kernel on a GPU, its host reference on the CPU.
void steady_evict(const kernels::SteadyEvictProblem& problem, const at::Tensor& on);

// H2O's accumulated attention of a prefill block: retention_policy.h's summed_attention (same
// arguments and contract, `key_pos` and `start` unused), from q and keys rounded to 16 bits (the
// model's bf16, else fp16), fp32 accumulation: kernels/summed_attention.h's two passes on a GPU
// (torch's formula at a head_dim they do not take), its host reference on the CPU.
at::Tensor summed_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& key_pos,
                            int64_t start);
// The same with q converted to fp16 (callers hand fp16 q) and each key split in two fp16 parts (hi
// + lo * 2^-11: 22 bits), for keys that are no 16-bit values (dequantized codes): sums within
// ~2^-22 of the fp32 formula's, at twice the products.
at::Tensor summed_attention_split(const at::Tensor& q, const at::Tensor& keys,
                                  const at::Tensor& key_pos, int64_t start);

// One job of head_project: x [n, heads, in] (fp32, fp16 or bf16) through `basis`
// [basis_heads, in, out] fp32 (head h through basis h / (heads / basis_heads)) into `out_dtype`;
// with `rope_cos` defined, each head_dim-wide segment of x's row i rotated back from RoPE at
// positions[i] first (rope_cos, rope_sin: [positions, head_dim] fp32; positions: [n] int64).
struct Projection {
  Projection(at::Tensor x_in, at::Tensor basis_in, at::ScalarType out = at::kFloat)
      : x(std::move(x_in)), basis(std::move(basis_in)), out_dtype(out) {}
  at::Tensor x, basis;
  at::ScalarType out_dtype;
  at::Tensor rope_cos, rope_sin, positions;  // set after construction where a job rotates
};
// Up to three per-head projections (kernels/head_project.h) in one launch, on the jobs' device
// (the CUDA kernel on a GPU, its host reference on the CPU): [n, heads, out] each, in order.
std::vector<at::Tensor> head_project(const std::vector<Projection>& jobs);

// Tokens [0, tokens) of one sequence as [kv_heads, tokens, head_dim] fp32 keys and values;
// `pages`: its block-table row (int32, on the device).
std::pair<at::Tensor, at::Tensor> dequantize(const kernels::PagedKvStore& store,
                                             const at::Tensor& pages, int64_t kv_heads,
                                             int64_t head_dim, int seq_row, int64_t tokens);

}  // namespace kvbench::paged_cuda
