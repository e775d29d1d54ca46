// The transformer's fused per-row kernels (kernels/model_ops.cu) against their host reference
// (model_ops.h, itself checked against float64 by tests/unit/model_ops_test.cpp) and float64,
// on the same random inputs, outputs poisoned with NaN first. The residual sum must equal the
// host's bit for bit (one rounding of the same two values); norms sum in another order than
// the host loop and the device's expf may differ from the host's in the last bit, so those
// outputs may differ by one rounding of the dtype. Skips without a GPU.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "device_buffer.h"
#include "model_ops_case.h"
#include "model_ops_check.h"
#include "model_ops_launcher.h"
#include "scaled_error.h"

namespace kvbench::gpu_test {
namespace {

using kernels::ActDtype;

#define ASSERT_CUDA(expr) ASSERT_CUDA_WITH(expr, "")

const std::vector<ActDtype> kDtypes = {ActDtype::kF32, ActDtype::kF16, ActDtype::kBf16};

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(ModelOpsGpuTest, RmsNormMatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (ActDtype t : kDtypes)
    for (bool residual : {false, true})
      for (auto [rows, dim] : std::vector<std::pair<int, int>>{
               {1, 4096}, {16, 4096}, {5, 97}, {33, 3584}, {2, 8192}}) {
        const RmsNormCase c(t, rows, dim, residual, 11 + dim + rows);
        ActArray host_x = c.x, host_out(t, c.x.n);
        kernels::rms_norm_host(c.problem(host_x, residual ? c.residual.data() : nullptr,
                                         c.weight.data(), host_out.data()));
        DeviceBuffer x, r, w, out;
        ASSERT_CUDA(x.upload(c.x.bytes));
        ASSERT_CUDA(r.upload(c.residual.bytes));
        ASSERT_CUDA(w.upload(c.weight.bytes));
        ActArray got_out(t, c.x.n), got_x = c.x;  // got_out: NaN
        ASSERT_CUDA(out.upload(got_out.bytes));
        kernels::RmsNormProblem p = c.problem(got_x, residual ? r.ptr : nullptr, w.ptr, out.ptr);
        p.x = x.ptr;
        ASSERT_CUDA(kernels::rms_norm(p, nullptr));
        ASSERT_CUDA(cudaDeviceSynchronize());
        ASSERT_CUDA(out.download(got_out.bytes));
        ASSERT_CUDA(x.download(got_x.bytes));
        EXPECT_EQ(got_x.bytes, host_x.bytes) << "x + residual";
        const std::string label = "rows " + std::to_string(rows) + " dim " + std::to_string(dim);
        EXPECT_LT(scaled_error(got_out.floats(), as_double(host_out.floats())), two_roundings(t))
            << label;
        EXPECT_LT(scaled_error(got_out.floats(), c.want_out), act_tolerance(t)) << label;
      }
}

TEST(ModelOpsGpuTest, RopeSplitMatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (ActDtype t : kDtypes)
    for (bool norms : {false, true})
      for (auto [rows, qh, kvh, hd] : std::vector<std::tuple<int, int, int, int>>{{1, 32, 8, 128},
                                                                                  {16, 32, 8, 128},
                                                                                  {7, 28, 4, 128},
                                                                                  {3, 16, 8, 64},
                                                                                  {2, 5, 1, 256},
                                                                                  {2, 6, 2, 96},
                                                                                  {2, 3, 1, 16}}) {
        const RopeCase c(t, rows, qh, kvh, hd, norms, 5 + hd + rows);
        ActArray hq(t, c.want_q.size()), hk(t, c.want_k.size()), hv(t, c.want_v.size());
        kernels::rope_split_host(c.problem(c.qkv.data(), c.cos.data(), c.sin.data(),
                                           c.q_norm.data(), c.k_norm.data(), hq.data(), hk.data(),
                                           hv.data()));
        DeviceBuffer in, cs, sn, qn, kn, q, k, v;
        ASSERT_CUDA(in.upload(c.qkv.bytes));
        ASSERT_CUDA(cs.upload(c.cos));
        ASSERT_CUDA(sn.upload(c.sin));
        ASSERT_CUDA(qn.upload(c.q_norm.bytes));
        ASSERT_CUDA(kn.upload(c.k_norm.bytes));
        ActArray gq(t, c.want_q.size()), gk(t, c.want_k.size()), gv(t, c.want_v.size());
        ASSERT_CUDA(q.upload(gq.bytes));
        ASSERT_CUDA(k.upload(gk.bytes));
        ASSERT_CUDA(v.upload(gv.bytes));
        ASSERT_CUDA(kernels::rope_split(
            c.problem(in.ptr, static_cast<const float*>(cs.ptr), static_cast<const float*>(sn.ptr),
                      qn.ptr, kn.ptr, q.ptr, k.ptr, v.ptr),
            nullptr));
        ASSERT_CUDA(cudaDeviceSynchronize());
        ASSERT_CUDA(q.download(gq.bytes));
        ASSERT_CUDA(k.download(gk.bytes));
        ASSERT_CUDA(v.download(gv.bytes));
        const std::string label = "rows " + std::to_string(rows) + " heads " + std::to_string(qh) +
                                  " hd " + std::to_string(hd) + " norms " + std::to_string(norms);
        expect_rope_split(c, norms, gq, gk, gv, hq, hk, hv, label);
      }
}

TEST(ModelOpsGpuTest, SiluMulMatchesTheHostReference) {
  std::string why;
  if (!have_gpu(&why)) GTEST_SKIP() << why;
  for (ActDtype t : kDtypes)
    for (auto [rows, dim] : std::vector<std::pair<int, int>>{{1, 14336}, {16, 14336}, {7, 45}}) {
      const SiluMulCase c(t, rows, dim, 3 + dim + rows);
      ActArray host(t, c.want.size());
      kernels::silu_mul_host(c.problem(c.gate_up.data(), host.data()));
      DeviceBuffer in, out;
      ASSERT_CUDA(in.upload(c.gate_up.bytes));
      ActArray got(t, c.want.size());
      ASSERT_CUDA(out.upload(got.bytes));
      ASSERT_CUDA(kernels::silu_mul(c.problem(in.ptr, out.ptr), nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      ASSERT_CUDA(out.download(got.bytes));
      EXPECT_LT(scaled_error(got.floats(), as_double(host.floats())), one_rounding(t));
      EXPECT_LT(scaled_error(got.floats(), c.want), act_tolerance(t));
    }
}

TEST(ModelOpsGpuTest, RejectsBadProblems) {
  kernels::RopeSplitProblem p;
  p.rows = 1, p.q_heads = 1, p.kv_heads = 1, p.head_dim = 512;
  EXPECT_EQ(kernels::rope_split(p, nullptr), cudaErrorInvalidValue);
  kernels::SiluMulProblem s;
  s.rows = 1, s.dim = 4;
  EXPECT_EQ(kernels::silu_mul(s, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvbench::gpu_test
