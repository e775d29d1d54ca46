// The transformer's fused per-row work (kernels/model_ops.h, the code the CUDA kernels run):
// its host reference against float64 formulas in every activation dtype; the wrappers
// (fused_ops.h) on their host-kernel path against the eager libtorch formulas; and whole
// forward passes both ways. Host code; runs without a GPU.
#include "kvbench/model/fused_ops.h"

#include <gtest/gtest.h>

#include <array>

#include <cstdlib>
#include <string>
#include <vector>

#include "env_guard.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/full_cache.h"
#include "kvbench/model/model_config.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/rope.h"
#include "kvbench/model/transformer.h"
#include "model_ops_case.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {
namespace {

using kernels::ActDtype;

const std::vector<ActDtype> kDtypes = {ActDtype::kF32, ActDtype::kF16, ActDtype::kBf16};

std::string dtype_label(ActDtype t) {
  return t == ActDtype::kF32 ? "f32" : (t == ActDtype::kF16 ? "f16" : "bf16");
}

// Unwritten outputs stay NaN (the arrays start poisoned), which scaled_error counts as wrong.
TEST(ModelOpsHostTest, RmsNormMatchesFloat64) {
  for (ActDtype t : kDtypes)
    for (bool residual : {false, true})
      for (auto [rows, dim] : std::vector<std::pair<int, int>>{{1, 4096}, {5, 97}, {3, 128}}) {
        const RmsNormCase c(t, rows, dim, residual, 11 + dim);
        ActArray x = c.x, out(t, c.x.n);
        kernels::rms_norm_host(
            c.problem(x, residual ? c.residual.data() : nullptr, c.weight.data(), out.data()));
        const std::vector<float> got_x = x.floats();
        for (size_t i = 0; i < got_x.size(); ++i)
          ASSERT_EQ(got_x[i], float(c.want_x[i])) << "x + residual, element " << i;
        EXPECT_LT(scaled_error(out.floats(), c.want_out), act_tolerance(t))
            << dtype_label(t) << " rows " << rows << " dim " << dim << " residual " << residual;
      }
}

TEST(ModelOpsHostTest, RopeSplitMatchesFloat64) {
  for (ActDtype t : kDtypes)
    for (bool norms : {false, true})
      for (auto [rows, qh, kvh, hd] : std::vector<std::tuple<int, int, int, int>>{
               {1, 32, 8, 128}, {4, 4, 2, 64}, {3, 6, 3, 32}}) {
        const RopeCase c(t, rows, qh, kvh, hd, norms, 5 + hd + rows);
        ActArray q(t, c.want_q.size()), k(t, c.want_k.size()), v(t, c.want_v.size());
        kernels::rope_split_host(c.problem(c.qkv.data(), c.cos.data(), c.sin.data(),
                                           c.q_norm.data(), c.k_norm.data(), q.data(), k.data(),
                                           v.data()));
        const std::string label = dtype_label(t) + " heads " + std::to_string(qh) + " hd " +
                                  std::to_string(hd) + " norms " + std::to_string(norms);
        // RoPE rounds once; the norms twice more; cos/sin carry fp32 rounding.
        EXPECT_LT(scaled_error(q.floats(), c.want_q), act_tolerance(t) + 1e-6) << label;
        EXPECT_LT(scaled_error(k.floats(), c.want_k), act_tolerance(t) + 1e-6) << label;
        EXPECT_EQ(scaled_error(v.floats(), c.want_v), 0.0) << label;  // v is copied
      }
}

TEST(ModelOpsHostTest, SiluMulMatchesFloat64) {
  for (ActDtype t : kDtypes)
    for (auto [rows, dim] : std::vector<std::pair<int, int>>{{1, 14336}, {7, 45}}) {
      const SiluMulCase c(t, rows, dim, 3 + dim);
      ActArray out(t, c.want.size());
      kernels::silu_mul_host(c.problem(c.gate_up.data(), out.data()));
      EXPECT_LT(scaled_error(out.floats(), c.want), act_tolerance(t)) << dtype_label(t);
    }
}

TEST(ModelOpsHostTest, ChecksRejectBadProblems) {
  kernels::RopeSplitProblem rope;
  rope.rows = 1, rope.q_heads = 1, rope.kv_heads = 1, rope.head_dim = 63;
  EXPECT_NE(kernels::model_ops_check(rope).find("head_dim"), std::string::npos);
  kernels::RmsNormProblem norm;
  norm.rows = 1, norm.dim = 8;
  EXPECT_NE(kernels::model_ops_check(norm).find("required"), std::string::npos);
  float buffer[8];
  norm.x = norm.out = buffer, norm.weight = buffer;
  EXPECT_NE(kernels::model_ops_check(norm).find("alias"), std::string::npos);
}

using testing_support::with_env;

// Runs `body` with the wrappers on their eager path (the variable unset: a developer may run
// the tests with it set).
template <typename Body>
void on_eager(Body body) {
  with_env("KVBENCH_PAGED_PATH", nullptr, [&] {
    ASSERT_EQ(model_ops_path(at::kCPU), ModelOpsPath::kEager);
    body();
  });
}

// Runs `body` with the wrappers on their host-kernel path (KVBENCH_PAGED_PATH=kernels).
template <typename Body>
void on_host_kernels(Body body) {
  with_env("KVBENCH_PAGED_PATH", "kernels", [&] {
    ASSERT_EQ(model_ops_path(at::kCPU), ModelOpsPath::kHostKernels);
    body();
  });
}

// A head wider than the fused RoPE split takes is refused when the model is built on a kernel
// path (it loaded, then failed at its first forward); the eager path takes it.
TEST(ModelOpsWrapperTest, AHeadTooWideForTheKernelsIsRefusedAtLoad) {
  nlohmann::json raw = find_model_preset("tiny-llama").config;
  raw["head_dim"] = 512;
  const ModelConfig config = parse_model_config(raw, "wide");
  const ModelPlacement cpu{at::kCPU, at::kFloat};
  on_host_kernels([&] {
    try {
      Transformer::random(config, 0, cpu);
      FAIL() << "head_dim 512";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("head_dim 512 is more than the 256 values per head"),
                std::string::npos)
          << e.what();
    }
  });
  on_eager([&] { EXPECT_NO_THROW(Transformer::random(config, 0, cpu)); });
}

double rel_error(const at::Tensor& got, const at::Tensor& want) {
  return ((got.to(at::kDouble) - want.to(at::kDouble)).norm() / want.to(at::kDouble).norm())
      .item<double>();
}

// The wrappers' layouts (strided qkv views, per-head norms, in-place residual) agree with the
// eager formulas: fp32 to summation order, bf16 to one rounding.
TEST(ModelOpsWrapperTest, HostKernelsMatchTheEagerFormulas) {
  on_eager([] {
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const double tol = dtype == at::kFloat ? 2e-6 : 8e-3;
      at::manual_seed(4);
      const int64_t n = 5, heads = 6, kv = 2, hd = 64;
      const at::Tensor qkv = at::randn({n, (heads + 2 * kv) * hd}).to(dtype);
      const at::Tensor qn = (1 + 0.1 * at::randn({hd})).to(dtype);
      const at::Tensor kn = (1 + 0.1 * at::randn({hd})).to(dtype);
      auto [cos, sin] =
          rope_cos_sin(at::tensor(std::vector<int64_t>{0, 3, 90, 91, 4000}, at::kLong),
                       at::pow(10000.0, -at::arange(0, hd, 2, at::kDouble) / hd));
      const RopeTables rope{cos, sin, cos.to(dtype), sin.to(dtype)};
      const QkvRows eager = split_qkv_rope(qkv, heads, kv, hd, rope, qn, kn, 1e-6);
      at::Tensor x0 = at::randn({n, 96}).to(dtype), r = at::randn({n, 96}).to(dtype);
      const at::Tensor w = (1 + 0.1 * at::randn({96})).to(dtype);
      at::Tensor x_eager = x0.clone();
      const at::Tensor norm_eager = add_rms_norm(x_eager, r, w, 1e-5);
      const at::Tensor gu = at::randn({n, 2 * 40}).to(dtype);
      const at::Tensor act_eager = silu_mul(gu);
      on_host_kernels([&] {
        const QkvRows host = split_qkv_rope(qkv, heads, kv, hd, rope, qn, kn, 1e-6);
        EXPECT_LT(rel_error(host.q, eager.q), tol);
        EXPECT_LT(rel_error(host.k, eager.k), tol);
        EXPECT_TRUE(host.v.equal(eager.v));
        EXPECT_TRUE(host.q.is_contiguous() && host.k.is_contiguous() && host.v.is_contiguous());
        at::Tensor x_host = x0.clone();
        const at::Tensor norm_host = add_rms_norm(x_host, r, w, 1e-5);
        EXPECT_TRUE(x_host.equal(x_eager));  // the residual sum, rounded once either way
        EXPECT_LT(rel_error(norm_host, norm_eager), tol);
        EXPECT_LT(rel_error(silu_mul(gu), act_eager), tol);
      });
    }
  });
}

// Whole forward passes (prefill, then batched decode steps) on the host-kernel path give the
// eager path's logits: every architecture (biases, Qwen3's q/k norms, tied embeddings).
TEST(ModelOpsWrapperTest, ForwardOnHostKernelsMatchesEager) {
  for (const char* name : {"tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-mistral"}) {
    const Transformer m =
        Transformer::random(parse_model_config(find_model_preset(name).config, name), 9);
    const ModelConfig& c = m.config();
    auto run = [&] {
      FullKVCache cache(c.num_layers, c.num_kv_heads, c.head_dim, at::kFloat);
      std::vector<SequenceStep> steps = {{cache.add_sequence(), {5, 6, 7, 8}},
                                         {cache.add_sequence(), {9, 10}}};
      std::vector<at::Tensor> logits = {m.forward(steps, cache, /*all_logits=*/true)};
      for (int64_t t : {11, 12}) {
        for (auto& s : steps) s.tokens = {t};
        logits.push_back(m.forward(steps, cache));
      }
      return at::cat(logits, 0);
    };
    at::Tensor eager;
    on_eager([&] { eager = run(); });
    on_host_kernels([&] { EXPECT_LT(rel_error(run(), eager), 1e-5) << name; });
  }
}

// A model's logits over a 4-token prefill (every row) and one decode step, on a fresh cache.
at::Tensor prefill_then_step(const Transformer& m) {
  const ModelConfig& c = m.config();
  FullKVCache cache(c.num_layers, c.num_kv_heads, c.head_dim, at::kFloat);
  const int64_t seq = cache.add_sequence();
  at::Tensor prefill = m.forward({{seq, {5, 6, 7, 8}}}, cache, /*all_logits=*/true);
  return at::cat({prefill, m.forward({{seq, {11}}}, cache)}, 0);
}

// linear_rows: libtorch's matmul unless KVBENCH_MODEL_GEMM=kvbench, then the small-batch
// kernel's host reference on the CPU where the kernel takes the tensors (bf16 here, with and
// without bias, a strided x), one rounding of bf16 from libtorch's; what the kernel does not
// take (33 rows, `in` not a multiple of 32, fp32) still goes to libtorch, bit for bit.
TEST(ModelOpsWrapperTest, LinearRowsTakesTheSmallBatchKernelWhereItApplies) {
  at::manual_seed(6);
  const at::Tensor w = (0.05 * at::randn({72, 128})).to(at::kBFloat16);
  const at::Tensor b = (0.5 * at::randn({72})).to(at::kBFloat16);
  const at::Tensor wide = at::randn({16, 256}).to(at::kBFloat16);
  const at::Tensor strided = wide.narrow(1, 64, 128);  // rows 256 apart
  const at::Tensor x = at::randn({5, 128}).to(at::kBFloat16);
  EXPECT_TRUE(small_gemm_takes(x, w, b));
  EXPECT_TRUE(small_gemm_takes(strided, w, at::Tensor()));
  EXPECT_FALSE(small_gemm_takes(at::randn({33, 128}).to(at::kBFloat16), w, b));
  EXPECT_FALSE(small_gemm_takes(x.narrow(1, 0, 80), w.narrow(1, 0, 80).contiguous(), b));
  EXPECT_FALSE(small_gemm_takes(x.to(at::kFloat), w.to(at::kFloat), b.to(at::kFloat)));
  EXPECT_FALSE(small_gemm_takes(x, w, b.narrow(0, 0, 70)));
  int64_t runs = small_gemm_runs();
  with_env("KVBENCH_MODEL_GEMM", nullptr,
           [&] { EXPECT_TRUE(linear_rows(x, w, b).equal(at::addmm(b, x, w.t()))); });
  EXPECT_EQ(small_gemm_runs(), runs);
  with_env("KVBENCH_MODEL_GEMM", "kvbench", [&] {
    const at::Tensor with_bias = linear_rows(x, w, b), plain = linear_rows(strided, w, {});
    EXPECT_EQ(small_gemm_runs(), runs + 2);
    EXPECT_EQ(with_bias.sizes(), (std::vector<int64_t>{5, 72}));
    EXPECT_EQ(with_bias.scalar_type(), at::kBFloat16);
    EXPECT_LT(rel_error(with_bias, at::addmm(b, x, w.t())), 8e-3);
    EXPECT_LT(rel_error(plain, at::mm(strided, w.t())), 8e-3);
    // fp16, which the kernel takes (and libtorch 1.13's CPU matmul does not): against fp32.
    const at::Tensor xh = x.to(at::kHalf), wh = w.to(at::kHalf), bh = b.to(at::kHalf);
    const at::Tensor want = at::addmm(b.to(at::kFloat), x.to(at::kFloat), w.to(at::kFloat).t());
    EXPECT_LT(rel_error(linear_rows(xh, wh, bh), want), 1e-3);
    runs = small_gemm_runs();
    const at::Tensor many = at::randn({33, 128}).to(at::kBFloat16);
    EXPECT_TRUE(linear_rows(many, w, b).equal(at::addmm(b, many, w.t())));
    const at::Tensor xf = x.to(at::kFloat), wf = w.to(at::kFloat);
    EXPECT_TRUE(linear_rows(xf, wf, {}).equal(at::mm(xf, wf.t())));
    EXPECT_EQ(small_gemm_runs(), runs) << "refused shapes went to libtorch";
  });
  with_env("KVBENCH_MODEL_GEMM", "aten",
           [&] { EXPECT_TRUE(linear_rows(x, w, b).equal(at::addmm(b, x, w.t()))); });
  for (const char* width : {"kvbench:16", "kvbench:32"})
    with_env("KVBENCH_MODEL_GEMM", width, [&] {
      const int64_t before = small_gemm_runs();
      EXPECT_LT(rel_error(linear_rows(x, w, b), at::addmm(b, x, w.t())), 8e-3) << width;
      EXPECT_EQ(small_gemm_runs(), before + 1) << width;
    });
  with_env("KVBENCH_MODEL_GEMM", "cublas", [&] {
    try {
      linear_rows(x, w, b);
      ADD_FAILURE() << "an unknown setting was taken";
    } catch (const kvbench::Error& e) {
      EXPECT_NE(std::string(e.what()).find("KVBENCH_MODEL_GEMM: expected aten, kvbench, "
                                           "kvbench:16 or kvbench:32, got 'cublas'"),
                std::string::npos)
          << e.what();
    }
  });
}

// A bf16 model's forward (prefill of more than 32 rows on libtorch, decode steps on the
// small-batch kernel) gives libtorch's logits up to a few bf16 roundings.
TEST(ModelOpsWrapperTest, ForwardWithTheSmallBatchKernelMatchesLibtorch) {
  const ModelPlacement bf16{at::Device(at::kCPU), at::kBFloat16};
  const Transformer m = Transformer::random(
      parse_model_config(find_model_preset("tiny-qwen2").config, "tiny-qwen2"), 9, bf16);
  const ModelConfig& c = m.config();
  auto run = [&] {
    FullKVCache cache(c.num_layers, c.num_kv_heads, c.head_dim, at::kFloat);
    std::vector<SequenceStep> steps = {{cache.add_sequence(), std::vector<int64_t>(40, 5)},
                                       {cache.add_sequence(), {9, 10}}};
    std::vector<at::Tensor> logits = {m.forward(steps, cache)};
    for (int64_t t : {11, 12}) {
      for (auto& s : steps) s.tokens = {t};
      logits.push_back(m.forward(steps, cache));
    }
    return at::cat(logits, 0);
  };
  at::Tensor aten, kernel;
  with_env("KVBENCH_MODEL_GEMM", nullptr, [&] { aten = run(); });
  const int64_t runs = small_gemm_runs();
  with_env("KVBENCH_MODEL_GEMM", "kvbench", [&] { kernel = run(); });
  // Two decode steps, four projections per layer and the head each; of the prefill (42 rows)
  // only the head, over the sequences' last rows.
  EXPECT_EQ(small_gemm_runs() - runs, 2 * (4 * c.num_layers + 1) + 1);
  EXPECT_LT(rel_error(kernel, aten), 3e-2);
}

// On a GPU: the small-batch kernel against cuBLAS at a decode step's shapes (Llama-3-8B's
// fused QKV, a part tile of the head's width), fp16 and bf16, and a whole fp16 forward.
TEST(ModelOpsWrapperTest, SmallGemmOnTheGpuMatchesCublas) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  const at::Device gpu(at::kCUDA, 0);
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    const double tol = dtype == at::kHalf ? 2e-3 : 1.6e-2;
    const auto on = at::TensorOptions().device(gpu).dtype(dtype);
    at::manual_seed(7);
    for (auto [rows, in, out] : std::vector<std::array<int64_t, 3>>{
             {16, 4096, 6144}, {32, 4096, 1000}, {1, 14336, 4096}, {9, 4096, 8200}}) {
      const at::Tensor x = at::randn({rows, in}).to(on), w = (0.02 * at::randn({out, in})).to(on);
      const at::Tensor b = (0.1 * at::randn({out})).to(on);
      const at::Tensor want = at::addmm(b, x, w.t());
      for (const char* setting : {"kvbench", "kvbench:16", "kvbench:32"})
        with_env("KVBENCH_MODEL_GEMM", setting, [&] {
          const int64_t runs = small_gemm_runs();
          const at::Tensor got = linear_rows(x, w, b);
          EXPECT_EQ(small_gemm_runs(), runs + 1);
          EXPECT_LT(rel_error(got, want), tol) << setting << " " << rows << "x" << in << "x" << out;
        });
    }
  }
  const Transformer m =
      Transformer::random(parse_model_config(find_model_preset("tiny-qwen2").config, "tiny-qwen2"),
                          9, ModelPlacement{gpu, at::kHalf});
  at::Tensor cublas;
  with_env("KVBENCH_MODEL_GEMM", nullptr, [&] { cublas = prefill_then_step(m); });
  const int64_t runs = small_gemm_runs();
  with_env("KVBENCH_MODEL_GEMM", "kvbench",
           [&] { EXPECT_LT(rel_error(prefill_then_step(m), cublas), 1e-2); });
  // The prefill's 4 rows and the step's 1, four projections per layer and the head each.
  EXPECT_EQ(small_gemm_runs() - runs, 2 * (4 * m.config().num_layers + 1));
}

// On a GPU: the CUDA kernels (the default there) against the eager formulas on the same
// device (KVBENCH_MODEL_OPS=aten), per op in fp16 and bf16 and for whole fp16 forwards of
// every tiny architecture. The eager path rounds each of RoPE's terms and each norm's fp32
// sum in its own order: one or two roundings of the dtype apart.
TEST(ModelOpsWrapperTest, CudaKernelsMatchTheEagerFormulasOnTheGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "libtorch has no CUDA (or no GPU is visible)";
  const at::Device gpu(at::kCUDA, 0);
  ASSERT_EQ(model_ops_path(gpu), ModelOpsPath::kCuda) << "built without the CUDA kernels";
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    const double tol = dtype == at::kHalf ? 2e-3 : 1.6e-2;
    const auto on = at::TensorOptions().device(gpu).dtype(dtype);
    at::manual_seed(5);
    const int64_t n = 16, heads = 32, kv = 8, hd = 128, hidden = 4096, inter = 1024;
    const at::Tensor qkv = at::randn({n, (heads + 2 * kv) * hd}).to(on);
    const at::Tensor qn = (1 + 0.1 * at::randn({hd})).to(on),
                     kn = (1 + 0.1 * at::randn({hd})).to(on);
    std::vector<int64_t> positions;
    for (int64_t i = 0; i < n; ++i) positions.push_back(i * 517);
    auto [cos, sin] = rope_cos_sin(at::tensor(positions, at::kLong),
                                   at::pow(500000.0, -at::arange(0, hd, 2, at::kDouble) / hd));
    const RopeTables rope{cos.to(gpu), sin.to(gpu), cos.to(on), sin.to(on)};
    const at::Tensor x0 = at::randn({n, hidden}).to(on), r = at::randn({n, hidden}).to(on);
    const at::Tensor w = (1 + 0.1 * at::randn({hidden})).to(on);
    const at::Tensor gu = at::randn({n, 2 * inter}).to(on);
    at::Tensor x_kernel = x0.clone();
    const at::Tensor norm_kernel = add_rms_norm(x_kernel, r, w, 1e-5);
    const QkvRows kernel = split_qkv_rope(qkv, heads, kv, hd, rope, qn, kn, 1e-6);
    const at::Tensor act_kernel = silu_mul(gu);
    with_env("KVBENCH_MODEL_OPS", "aten", [&] {
      ASSERT_EQ(model_ops_path(gpu), ModelOpsPath::kEager);
      at::Tensor x_eager = x0.clone();
      EXPECT_LT(rel_error(norm_kernel, add_rms_norm(x_eager, r, w, 1e-5)), tol);
      EXPECT_TRUE(x_kernel.equal(x_eager));
      const QkvRows eager = split_qkv_rope(qkv, heads, kv, hd, rope, qn, kn, 1e-6);
      EXPECT_LT(rel_error(kernel.q, eager.q), tol);
      EXPECT_LT(rel_error(kernel.k, eager.k), tol);
      EXPECT_TRUE(kernel.v.equal(eager.v));
      EXPECT_LT(rel_error(act_kernel, silu_mul(gu)), tol);
    });
  }
  const ModelPlacement fp16{gpu, at::kHalf};
  for (const char* name : {"tiny-llama", "tiny-qwen2", "tiny-qwen3"}) {
    const Transformer m =
        Transformer::random(parse_model_config(find_model_preset(name).config, name), 9, fp16);
    const at::Tensor kernels = prefill_then_step(m);
    with_env("KVBENCH_MODEL_OPS", "aten",
             [&] { EXPECT_LT(rel_error(kernels, prefill_then_step(m)), 1e-2) << name; });
  }
}

}  // namespace
}  // namespace kvbench::gpu_test
