// The transformer's per-row work (norms, the QKV split with RoPE, SwiGLU's product), where
// the model runs it:
//   CUDA tensors   one kernel each (kernels/model_ops.h): about 10 launches per layer and
//                  decode step instead of eager libtorch's ~45, so the host keeps ahead of
//                  the GPU and the step's time is the bytes it reads (KVBENCH_MODEL_OPS=aten
//                  selects the eager formulas there, to compare).
//   CPU tensors    the eager libtorch formulas (rms_norm, apply_rope, silu), unchanged; with
//                  KVBENCH_PAGED_PATH=kernels (tests) the kernels' host references instead,
//                  so whole runs exercise the GPU path's layouts on the CPU.
// Both agree up to fp32 summation order and a few roundings of the activation dtype (the
// eager path rounds cos/sin and each RoPE term to it; tests/unit/model_ops_test.cpp). The
// kernels launch on torch's current stream of the tensors' device (core/cuda_stream.h), as the
// paged cache's do, so they queue in order with the torch ops around them.
#pragma once

#include <ATen/ATen.h>

namespace kvbench {

enum class ModelOpsPath { kEager, kHostKernels, kCuda };

// Which implementation runs for tensors on `device`.
ModelOpsPath model_ops_path(const at::Device& device);
// Throws when the kernel path of `device` cannot take heads of `head_dim` values (the fused
// RoPE split holds a head of at most 256): said when a model loads, not at its first forward.
void check_model_ops_head_dim(int64_t head_dim, const at::Device& device);

// With `residual` defined: x += residual (x is updated: in place on the kernel paths), then
// the RMSNorm of x; without: the RMSNorm of x. x, residual [rows, dim] in the activation
// dtype; weight [dim] in the same dtype. Returns [rows, dim].
at::Tensor add_rms_norm(at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        double eps);

// Each path reads one pair; the caller fills the pair model_ops_path() picks.
struct RopeTables {
  at::Tensor cos, sin;          // [rows, head_dim] fp32 (rope_cos_sin): the kernels'
  at::Tensor cos_act, sin_act;  // the same in the activation dtype: the eager formulas'
};

struct QkvRows {
  at::Tensor q, k, v;  // [rows, heads, head_dim] and [rows, kv_heads, head_dim]
};

// The fused projection's output qkv [rows, (heads + 2 kv_heads) * head_dim] split into q, k,
// v; q and k normed per head first when q_norm / k_norm are defined (Qwen3), then rotated.
QkvRows split_qkv_rope(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       const RopeTables& rope, const at::Tensor& q_norm, const at::Tensor& k_norm,
                       double eps);

// silu(gate) * up from the fused projection's output [rows, 2 dim] (gate first).
at::Tensor silu_mul(const at::Tensor& gate_up);

// x . w^T (+ b): x [rows, in], w [out, in] (Hugging Face's layout), b [out] or undefined;
// returns [rows, out] in x's dtype. With KVBENCH_MODEL_GEMM=kvbench (kvbench:16, kvbench:32:
// that block width of output columns instead of the launcher's choice), where kvbench's
// small-batch kernel takes the tensors (fp16 or bf16, 1 to 32 rows, in % 32 == 0: a decode
// step's projections; kernels/small_gemm.h), that kernel on a GPU, its host reference on the
// CPU (scalar and single-threaded: for tests of this path, seconds per step on a real model);
// libtorch's matmul (cuBLAS on a GPU) otherwise, and by default until the GPU bench has
// measured the kernel against cuBLAS (docs/perf-notes.md).
at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// Whether linear_rows takes the small-batch kernel for these tensors (the setting aside).
bool small_gemm_takes(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// How many multiplies linear_rows has given the small-batch kernel in this process (so tests
// see which path ran).
int64_t small_gemm_runs();

}  // namespace kvbench
