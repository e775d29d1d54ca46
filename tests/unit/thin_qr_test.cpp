// The batched thin QR's host reference (kernels/thin_qr.h), which the kernel matches bit for
// bit (tests/unit/thin_qr_emulation_test.cpp), against LAPACK's QR in float64: the same
// projection Q Q^T (the bases may differ in sign), orthonormal columns, a column that depends
// on the earlier ones and an all-zero matrix given zero columns. And GEAR's power iteration
// (orthonormal_columns, gear_low_rank) keeping its contract with it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kvbench/kv/gear_codec.h"
#include "thin_qr.h"
#include "thin_qr_case.h"

namespace kvbench {
namespace {

using gpu_test::ThinQrCase;

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

TEST(ThinQrTest, HostReferenceSpansWhatLapackSpans) {
  for (const auto& [n, r] : gpu_test::thin_qr_shapes()) {
    ThinQrCase c(n, r);
    SCOPED_TRACE(c.label());
    const at::Tensor x = at::from_blob(c.x.data(), {c.B, n, r}, at::kFloat).to(at::kDouble);
    std::vector<float> q = c.x;
    kernels::thin_qr_host(c.problem(q.data()));
    const at::Tensor got = at::from_blob(q.data(), {c.B, n, r}, at::kFloat).to(at::kDouble);
    const at::Tensor eye = at::eye(r, at::kDouble);
    for (int b = 0; b < c.B; ++b) {
      SCOPED_TRACE("matrix " + std::to_string(b));
      const at::Tensor g = got[b], gram = at::matmul(g.t(), g);
      if (b == 2) {  // all zero in, all zero out
        EXPECT_EQ(max_abs(g), 0.0);
        continue;
      }
      if (b == 1 && r > 1) {  // column 1 = 2 column 0: zero; the others orthonormal
        EXPECT_EQ(max_abs(g.select(1, 1)), 0.0);
        at::Tensor want = eye.clone();
        want[1][1] = 0.0;
        EXPECT_LT(max_abs(gram - want), 1e-5);
        continue;
      }
      EXPECT_LT(max_abs(gram - eye), 1e-5) << "columns not orthonormal";
      const at::Tensor lapack = std::get<0>(at::linalg_qr(x[b], "reduced"));
      EXPECT_LT(max_abs(at::matmul(g, g.t()) - at::matmul(lapack, lapack.t())), 1e-5)
          << "another projection than LAPACK's";
      EXPECT_LT(max_abs(at::matmul(g, at::matmul(g.t(), x[b])) - x[b]), 1e-5 * max_abs(x[b]))
          << "x is not in the columns' span";
    }
  }
}

TEST(ThinQrTest, ChecksSayWhatIsWrong) {
  kernels::ThinQrProblem p;
  EXPECT_STREQ(kernels::thin_qr_check(p), "batch, rows and cols must be positive");
  p.batch = 1, p.rows = 2, p.cols = 3;
  EXPECT_STREQ(kernels::thin_qr_check(p), "more columns than rows");
  p.cols = 2;
  EXPECT_STREQ(kernels::thin_qr_check(p), "a required pointer is null");
}

// GEAR's fit through it: q orthonormal, e's projection no larger than e, the input untouched,
// and the same factors' product as with LAPACK's QR in the loop (q q^T e up to rounding).
TEST(ThinQrTest, GearsPowerIterationKeepsItsContract) {
  auto gen = at::detail::createCPUGenerator(12);
  const at::Tensor e = at::randn({6, 64, 128}, gen);
  const at::Tensor y = at::randn({6, 64, 4}, gen), before = y.clone();
  const at::Tensor q = orthonormal_columns(y);
  EXPECT_TRUE(at::equal(y, before)) << "the input changed";
  EXPECT_LT(max_abs(at::bmm(q.transpose(1, 2), q) - at::eye(4).expand({6, 4, 4})), 1e-5);
  const auto [q4, p4] = gear_low_rank(e, 4, 3, 99);
  const at::Tensor fit = at::bmm(q4, p4.transpose(1, 2));
  EXPECT_LE((e - fit).norm().item<double>(), e.norm().item<double>());
  // The loop with LAPACK's QR from the same start gives the same low-rank product.
  at::Tensor p = gear_random_start(6, 128, 4, 99), lq;
  for (int i = 0; i < 3; ++i) {
    lq = std::get<0>(at::linalg_qr(at::bmm(e, p), "reduced"));
    p = at::bmm(e.transpose(1, 2), lq);
  }
  EXPECT_LT(max_abs(at::bmm(lq, p.transpose(1, 2)) - fit), 1e-4 * max_abs(fit));
}

}  // namespace
}  // namespace kvbench
