#include "kvbench/model/fused_ops.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "kvbench/core/act_dtype.h"
#include "kvbench/core/cuda_stream.h"
#include "kvbench/core/error.h"
#include "kvbench/model/rope.h"
#include "kvbench/model/transformer.h"
#include "model_ops.h"
#include "small_gemm.h"

#ifdef KVBENCH_HAVE_CUDA
#include "model_ops_launcher.h"
#include "small_gemm_launcher.h"
#endif

namespace kvbench {
namespace {

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == value;
}

kernels::ActDtype act_dtype(const at::Tensor& t) {
  return kvbench::act_dtype(t.scalar_type(), "model ops", "activations");
}

// Runs `problem` with the kernel (CUDA tensors, on torch's current stream of `device`) or its
// host reference (CPU tensors).
template <typename Problem, typename Host, typename Launch>
void run(const Problem& problem, bool cuda, const at::Device& device, Host host, Launch launch,
         const char* what) {
  const std::string why = kernels::model_ops_check(problem);
  KVB_CHECK(why.empty(), "model ops: ", why);
  if (!cuda) {
    host(problem);
    return;
  }
#ifdef KVBENCH_HAVE_CUDA
  const cudaError_t err = launch(problem, static_cast<cudaStream_t>(current_cuda_stream(device)));
  KVB_CHECK(err == cudaSuccess, "model ops: ", what, ": ", cudaGetErrorString(err));
#else
  (void)launch, (void)device;
  throw Error(std::string("model ops: ") + what +
              " on a GPU needs the CUDA kernels (KVBENCH_CUDA)");
#endif
}

#ifdef KVBENCH_HAVE_CUDA
#define KVB_LAUNCHER(fn) [](const auto& p, cudaStream_t s) { return kernels::fn(p, s); }
#else
#define KVB_LAUNCHER(fn) [](const auto&, void*) { return 0; }
#endif

at::Tensor ready(const at::Tensor& t, const at::Tensor& like) {
  return t.to(like.device(), like.scalar_type()).contiguous();
}

}  // namespace

ModelOpsPath model_ops_path(const at::Device& device) {
  if (device.is_cuda()) {
#ifdef KVBENCH_HAVE_CUDA
    return env_is("KVBENCH_MODEL_OPS", "aten") ? ModelOpsPath::kEager : ModelOpsPath::kCuda;
#else
    return ModelOpsPath::kEager;
#endif
  }
  // Read per call (a few per layer, against a matmul's microseconds): tests switch it.
  return env_is("KVBENCH_PAGED_PATH", "kernels") ? ModelOpsPath::kHostKernels
                                                 : ModelOpsPath::kEager;
}

void check_model_ops_head_dim(int64_t head_dim, const at::Device& device) {
  const ModelOpsPath path = model_ops_path(device);
  KVB_CHECK(path == ModelOpsPath::kEager || head_dim <= kernels::kRopeMaxHeadDim,
            "model: head_dim ", head_dim, " is more than the ", kernels::kRopeMaxHeadDim,
            " values per head the ",
            path == ModelOpsPath::kCuda ? "GPU's" : "host kernels' (KVBENCH_PAGED_PATH=kernels)",
            " fused RoPE split takes; KVBENCH_MODEL_OPS=aten runs the model's per-row ops in "
            "libtorch on a GPU");
}

at::Tensor add_rms_norm(at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  KVB_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1) &&
                (!residual.defined() || residual.sizes() == x.sizes()),
            "model ops: add_rms_norm expects x [rows, dim], residual like x, weight [dim]");
  const ModelOpsPath path = model_ops_path(x.device());
  if (path == ModelOpsPath::kEager) {
    if (residual.defined()) x = x + residual;
    return rms_norm(x, weight, eps);
  }
  if (!x.is_contiguous()) x = x.contiguous();
  const at::Tensor r = residual.defined() ? ready(residual, x) : at::Tensor();
  const at::Tensor w = ready(weight, x);
  at::Tensor out = at::empty_like(x);
  kernels::RmsNormProblem p;
  p.rows = int(x.size(0)), p.dim = int(x.size(1)), p.eps = float(eps), p.dtype = act_dtype(x);
  p.x = x.data_ptr(), p.residual = r.defined() ? r.data_ptr() : nullptr;
  p.weight = w.data_ptr(), p.out = out.data_ptr();
  run(p, path == ModelOpsPath::kCuda, x.device(), kernels::rms_norm_host, KVB_LAUNCHER(rms_norm),
      "rms_norm");
  return out;
}

QkvRows split_qkv_rope(const at::Tensor& qkv, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       const RopeTables& rope, const at::Tensor& q_norm, const at::Tensor& k_norm,
                       double eps) {
  const int64_t n = qkv.size(0), qd = heads * head_dim, kvd = kv_heads * head_dim;
  const ModelOpsPath path = model_ops_path(qkv.device());
  const at::Tensor& table = path == ModelOpsPath::kEager ? rope.cos_act : rope.cos;
  KVB_CHECK(qkv.dim() == 2 && qkv.size(1) == qd + 2 * kvd && table.defined() &&
                table.size(0) == n && table.size(1) == head_dim,
            "model ops: split_qkv_rope expects qkv [rows, ", qd + 2 * kvd, "] and cos/sin [rows, ",
            head_dim, "]");
  if (path == ModelOpsPath::kEager) {
    at::Tensor q = qkv.narrow(1, 0, qd).view({n, heads, head_dim});
    at::Tensor k = qkv.narrow(1, qd, kvd).view({n, kv_heads, head_dim});
    at::Tensor v = qkv.narrow(1, qd + kvd, kvd).view({n, kv_heads, head_dim});
    // Contiguous first: the norm's fp32 sums then take one order whatever the batch holds (a
    // strided view of one row reduces in another order than of several, which can flip the
    // rounding of a key stored in bf16).
    if (q_norm.defined()) q = rms_norm(q.contiguous(), q_norm, eps);
    if (k_norm.defined()) k = rms_norm(k.contiguous(), k_norm, eps);
    return {apply_rope(q, rope.cos_act, rope.sin_act), apply_rope(k, rope.cos_act, rope.sin_act),
            v};
  }
  const at::Tensor in = qkv.contiguous();
  const at::Tensor cos = rope.cos.to(in.device(), at::kFloat).contiguous();
  const at::Tensor sin = rope.sin.to(in.device(), at::kFloat).contiguous();
  const at::Tensor qn = q_norm.defined() ? ready(q_norm, in) : at::Tensor();
  const at::Tensor kn = k_norm.defined() ? ready(k_norm, in) : at::Tensor();
  QkvRows out{at::empty({n, heads, head_dim}, in.options()),
              at::empty({n, kv_heads, head_dim}, in.options()),
              at::empty({n, kv_heads, head_dim}, in.options())};
  kernels::RopeSplitProblem p;
  p.rows = int(n), p.q_heads = int(heads), p.kv_heads = int(kv_heads), p.head_dim = int(head_dim);
  p.eps = float(eps), p.dtype = act_dtype(in), p.qkv = in.data_ptr();
  p.cos = cos.data_ptr<float>(), p.sin = sin.data_ptr<float>();
  p.q_norm = qn.defined() ? qn.data_ptr() : nullptr;
  p.k_norm = kn.defined() ? kn.data_ptr() : nullptr;
  p.q = out.q.data_ptr(), p.k = out.k.data_ptr(), p.v = out.v.data_ptr();
  run(p, path == ModelOpsPath::kCuda, in.device(), kernels::rope_split_host,
      KVB_LAUNCHER(rope_split), "rope_split");
  return out;
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  KVB_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0,
            "model ops: silu_mul expects gate_up [rows, 2 dim]");
  const int64_t n = gate_up.size(0), dim = gate_up.size(1) / 2;
  const ModelOpsPath path = model_ops_path(gate_up.device());
  if (path == ModelOpsPath::kEager)
    return at::silu(gate_up.narrow(1, 0, dim)) * gate_up.narrow(1, dim, dim);
  const at::Tensor in = gate_up.contiguous();
  at::Tensor out = at::empty({n, dim}, in.options());
  kernels::SiluMulProblem p;
  p.rows = int(n), p.dim = int(dim), p.dtype = act_dtype(in);
  p.gate_up = in.data_ptr(), p.out = out.data_ptr();
  run(p, path == ModelOpsPath::kCuda, in.device(), kernels::silu_mul_host, KVB_LAUNCHER(silu_mul),
      "silu_mul");
  return out;
}

namespace {

// The kernel's problem for y = x . w^T + b when it takes these tensors (y left unset).
bool small_gemm_problem(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                        kernels::SmallGemmProblem* p) {
  const at::ScalarType t = x.scalar_type();
  if ((t != at::kHalf && t != at::kBFloat16) || x.dim() != 2 || w.dim() != 2 ||
      !x.is_contiguous() || !w.is_contiguous() || w.scalar_type() != t || w.size(1) != x.size(1) ||
      w.device() != x.device())
    return false;
  if (b.defined() && (b.dim() != 1 || b.size(0) != w.size(0) || b.scalar_type() != t ||
                      !b.is_contiguous() || b.device() != x.device()))
    return false;
  if (x.size(0) > kernels::kSmallGemmMaxRows || w.size(0) > (int64_t(1) << 30) ||
      x.size(1) > (int64_t(1) << 30))
    return false;
  p->rows = int(x.size(0)), p->in = int(x.size(1)), p->out = int(w.size(0));
  p->dtype = t == at::kHalf ? kernels::ActDtype::kF16 : kernels::ActDtype::kBf16;
  p->x = x.data_ptr(), p->w = w.data_ptr(), p->bias = b.defined() ? b.data_ptr() : nullptr;
  static char stand_in;  // y for the check (not x or w): the output gets its own tensor
  p->y = &stand_in;
  return kernels::small_gemm_check(*p)[0] == '\0';
}

std::atomic<int64_t> g_small_gemm_runs{0};

at::Tensor aten_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.defined() ? at::addmm(b, x, w.t()) : at::mm(x, w.t());
}

}  // namespace

int64_t small_gemm_runs() { return g_small_gemm_runs.load(); }

bool small_gemm_takes(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  kernels::SmallGemmProblem p;
  return small_gemm_problem(x.contiguous(), w, b, &p);
}

// KVBENCH_MODEL_GEMM: the small-batch kernel's block width for "kvbench" (0: the launcher's
// choice), "kvbench:16" and "kvbench:32"; -1 for "aten" or unset; anything else is an error.
int small_gemm_setting() {
  const char* v = std::getenv("KVBENCH_MODEL_GEMM");
  const std::string s = v ? v : "aten";
  if (s == "aten") return -1;
  if (s == "kvbench") return 0;
  if (s == "kvbench:16") return 16;
  if (s == "kvbench:32") return 32;
  throw Error("KVBENCH_MODEL_GEMM: expected aten, kvbench, kvbench:16 or kvbench:32, got '" + s +
              "'");
}

at::Tensor linear_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const int columns = small_gemm_setting();
  if (columns < 0) return aten_linear(x, w, b);
  const at::Tensor in = x.contiguous();
  kernels::SmallGemmProblem p;
  if (!small_gemm_problem(in, w, b, &p)) return aten_linear(x, w, b);
  p.columns = columns;
  at::Tensor y = at::empty({in.size(0), w.size(0)}, in.options());
  p.y = y.data_ptr();
  ++g_small_gemm_runs;
  if (!in.is_cuda()) {
    kernels::small_gemm_host(p);
    return y;
  }
#ifdef KVBENCH_HAVE_CUDA
  const cudaError_t err =
      kernels::small_gemm(p, static_cast<cudaStream_t>(current_cuda_stream(in.device())));
  KVB_CHECK(err == cudaSuccess, "model ops: small_gemm: ", cudaGetErrorString(err));
  return y;
#else
  throw Error(
      "model ops: KVBENCH_MODEL_GEMM=kvbench on a GPU needs the CUDA kernels (KVBENCH_CUDA)");
#endif
}

}  // namespace kvbench
