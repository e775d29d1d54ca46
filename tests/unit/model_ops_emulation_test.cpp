// The transformer's fused per-row kernels' own device code (kernels/model_ops_device.h: the
// norm's block reduction, RoPE's per-warp rows in shared memory, the SwiGLU product's
// grid-stride loop) runs on the CPU with emulated blocks and warps (tests/unit/cuda_emulation.h),
// at the launchers' geometry, on the GPU test's cases (model_ops_case.h) with shorter rows,
// outputs poisoned first, against the host reference and float64 with the GPU test's bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "model_ops_case.h"
#include "model_ops_check.h"
#include "scaled_error.h"

#include "cuda_emulation.h"  // last before the device header
#include "model_ops_device.h"

namespace kvbench::gpu_test {
namespace {

using kernels::ActDtype;
namespace md = kernels::model_ops_device;

const std::vector<ActDtype> kDtypes = {ActDtype::kF32, ActDtype::kF16, ActDtype::kBf16};

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(ModelOpsEmulationTest, RmsNormMatchesTheHostReference) {
  for (ActDtype t : kDtypes)
    for (bool residual : {false, true})
      for (auto [rows, dim] : std::vector<std::pair<int, int>>{{1, 4096}, {3, 97}, {2, 3584}}) {
        const RmsNormCase c(t, rows, dim, residual, 11 + dim + rows);
        ActArray host_x = c.x, host_out(t, c.x.n);
        kernels::rms_norm_host(c.problem(host_x, residual ? c.residual.data() : nullptr,
                                         c.weight.data(), host_out.data()));
        ActArray x = c.x, out(t, c.x.n);  // out: NaN
        const kernels::RmsNormProblem p =
            c.problem(x, residual ? c.residual.data() : nullptr, c.weight.data(), out.data());
        launch_emulated(rows, md::kNormThreads, [&] { md::rms_norm_body(p); });
        const std::string label = "rows " + std::to_string(rows) + " dim " + std::to_string(dim);
        EXPECT_EQ(x.bytes, host_x.bytes) << "x + residual, " << label;
        EXPECT_LT(scaled_error(out.floats(), as_double(host_out.floats())), two_roundings(t))
            << label;
        EXPECT_LT(scaled_error(out.floats(), c.want_out), act_tolerance(t)) << label;
      }
}

TEST(ModelOpsEmulationTest, RopeSplitMatchesTheHostReference) {
  for (ActDtype t : kDtypes)
    for (bool norms : {false, true})
      for (auto [rows, qh, kvh, hd] : std::vector<std::tuple<int, int, int, int>>{
               {2, 8, 2, 128}, {3, 7, 1, 64}, {1, 5, 1, 256}, {2, 6, 2, 96}, {2, 3, 1, 16}}) {
        const RopeCase c(t, rows, qh, kvh, hd, norms, 5 + hd + rows);
        ActArray hq(t, c.want_q.size()), hk(t, c.want_k.size()), hv(t, c.want_v.size());
        kernels::rope_split_host(c.problem(c.qkv.data(), c.cos.data(), c.sin.data(),
                                           c.q_norm.data(), c.k_norm.data(), hq.data(), hk.data(),
                                           hv.data()));
        ActArray gq(t, c.want_q.size()), gk(t, c.want_k.size()), gv(t, c.want_v.size());  // NaN
        const kernels::RopeSplitProblem p =
            c.problem(c.qkv.data(), c.cos.data(), c.sin.data(), c.q_norm.data(), c.k_norm.data(),
                      gq.data(), gk.data(), gv.data());
        const int heads = qh + 2 * kvh;
        launch_emulated(EmulatedIndex{unsigned(rows),
                                      unsigned((heads + md::kRopeWarps - 1) / md::kRopeWarps), 1},
                        md::kRopeWarps * 32, [&] { md::rope_split_body(p); });
        const std::string label = "rows " + std::to_string(rows) + " heads " + std::to_string(qh) +
                                  " hd " + std::to_string(hd) + " norms " + std::to_string(norms);
        expect_rope_split(c, norms, gq, gk, gv, hq, hk, hv, label);
      }
}

TEST(ModelOpsEmulationTest, SiluMulMatchesTheHostReference) {
  for (ActDtype t : kDtypes)
    for (auto [rows, dim] : std::vector<std::pair<int, int>>{{1, 1000}, {3, 45}}) {
      const SiluMulCase c(t, rows, dim, 3 + dim + rows);
      ActArray host(t, c.want.size()), got(t, c.want.size());  // got: NaN
      kernels::silu_mul_host(c.problem(c.gate_up.data(), host.data()));
      const kernels::SiluMulProblem p = c.problem(c.gate_up.data(), got.data());
      // Fewer blocks than the launcher's (which caps them at 16384): the grid-stride loop
      // covers the rest.
      launch_emulated(2, md::kElementThreads, [&] { md::silu_mul_body(p); });
      EXPECT_LT(scaled_error(got.floats(), as_double(host.floats())), one_rounding(t));
      EXPECT_LT(scaled_error(got.floats(), c.want), act_tolerance(t));
    }
}

}  // namespace
}  // namespace kvbench::gpu_test
