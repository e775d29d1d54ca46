// The per-head projections kvproj's cache runs on the GPU path (kernels/head_project.h), host
// reference: against a float64 evaluation of the definition on the same rounded inputs, in
// every activation dtype in and out; the wrapper (paged_cuda::head_project) against a torch
// formula, with several jobs in one call, a strided x and a grouped basis; and the wrapper's
// refusals.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../../src/kv/paged_cache_cuda.h"  // the paged cache's wrapper (private to src/kv)
#include "head_project.h"
#include "kvbench/core/error.h"

namespace kvbench {
namespace {

using kernels::ActDtype;

size_t act_bytes(ActDtype t) { return t == ActDtype::kF32 ? 4 : 2; }
// The relative rounding of one store in `t` (round to nearest: half an ulp).
double unit_roundoff(ActDtype t) {
  return t == ActDtype::kF32 ? 0x1p-24 : t == ActDtype::kF16 ? 0x1p-11 : 0x1p-8;
}

struct Shape {
  int rows, heads, basis_heads, in, out;
  int rope_dim = 0;  // > 0: rows rotated back from their RoPE positions first (Palu's keys)
};

// RoPE tables as model/rope.h lays them out: [positions, d], cat(freqs, freqs).
std::pair<std::vector<float>, std::vector<float>> rope_tables(int positions, int d) {
  std::vector<float> cos(size_t(positions) * d), sin(cos.size());
  for (int t = 0; t < positions; ++t)
    for (int i = 0; i < d; ++i) {
      const double angle = t * std::pow(10000.0, -2.0 * (i % (d / 2)) / d);
      cos[size_t(t) * d + i] = float(std::cos(angle)),
                          sin[size_t(t) * d + i] = float(std::sin(angle));
    }
  return {cos, sin};
}

TEST(HeadProjectTest, HostReferenceMatchesFloat64) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.f, 1.f);
  const auto tables = rope_tables(600, 128);
  const std::vector<float>&cos = tables.first, &sin = tables.second;
  const std::vector<int64_t> positions = {0, 1, 599, 37, 300};  // rows' positions
  // kvproj's jobs; Palu's keys (rotated back) per KV head and per group of four heads.
  for (const Shape s :
       {Shape{3, 32, 8, 128, 64}, Shape{17, 4, 4, 256, 128}, Shape{2, 32, 8, 64, 128},
        Shape{1, 6, 1, 5, 7}, Shape{5, 8, 8, 128, 96, 128}, Shape{4, 2, 2, 512, 96, 128}}) {
    for (ActDtype xt : {ActDtype::kF32, ActDtype::kF16, ActDtype::kBf16}) {
      for (ActDtype ot : {ActDtype::kF32, ActDtype::kF16, ActDtype::kBf16}) {
        SCOPED_TRACE("heads " + std::to_string(s.heads) + ", in " + std::to_string(s.in) +
                     ", dtypes " + std::to_string(int(xt)) + " -> " + std::to_string(int(ot)));
        std::vector<uint8_t> x(size_t(s.rows) * s.heads * s.in * act_bytes(xt));
        for (size_t i = 0; i < size_t(s.rows) * s.heads * s.in; ++i)
          kernels::store_act(x.data(), i, normal(rng), xt);
        std::vector<float> basis(size_t(s.basis_heads) * s.in * s.out);
        for (float& b : basis) b = normal(rng) * 0.1f;
        const size_t n_out = size_t(s.rows) * s.heads * s.out;
        std::vector<uint8_t> out(n_out * act_bytes(ot), 0xff);  // NaN in every dtype
        kernels::HeadProjectProblem p;
        p.rows = s.rows, p.jobs = 1;
        kernels::HeadProjectJob& a = p.job[0];
        a.heads = s.heads, a.basis_heads = s.basis_heads, a.in_dim = s.in, a.out_dim = s.out;
        a.x_dtype = xt, a.out_dtype = ot, a.x = x.data(), a.basis = basis.data(),
        a.out = out.data();
        if (s.rope_dim > 0) {
          a.rope_cos = cos.data(), a.rope_sin = sin.data(), a.positions = positions.data();
          a.rope_dim = s.rope_dim;
        }
        ASSERT_STREQ(kernels::head_project_check(p), "");
        kernels::head_project_host(p);
        const int per = s.heads / s.basis_heads;
        for (int r = 0; r < s.rows; ++r)
          for (int h = 0; h < s.heads; ++h)
            for (int c = 0; c < s.out; ++c) {
              double want = 0, mag = 0;
              for (int k = 0; k < s.in; ++k) {
                const size_t x0 = (size_t(r) * s.heads + h) * s.in;
                double x_k = kernels::load_act(x.data(), x0 + k, xt), x_mag = std::abs(x_k);
                if (s.rope_dim > 0) {  // x cos - rotate_half(x) sin
                  const int d = s.rope_dim, i = k % d, half = d / 2;
                  const double other = kernels::load_act(
                      x.data(), x0 + (k - i) + (i < half ? i + half : i - half), xt);
                  const size_t t = size_t(positions[size_t(r)]) * d + i;
                  const double rotated = i < half ? -other : other;
                  x_k = x_k * cos[t] - rotated * sin[t];
                  x_mag = std::abs(x_mag * cos[t]) + std::abs(rotated * sin[t]);
                }
                const double b = basis[(size_t(h / per) * s.in + k) * s.out + c];
                want += x_k * b, mag += x_mag * std::abs(b);
              }
              const double got =
                  kernels::load_act(out.data(), (size_t(r) * s.heads + h) * s.out + c, ot);
              // fp32 sums (in * 2^-24 of the magnitude) and one rounding to the output dtype.
              ASSERT_NEAR(got, want,
                          s.in * 0x1p-24 * mag + unit_roundoff(ot) * std::abs(want) + 1e-30)
                  << "row " << r << ", head " << h << ", column " << c;
            }
      }
    }
  }
}

// The same through the wrapper on CPU tensors, beside torch's formula in fp32.
at::Tensor formula(const at::Tensor& x, const at::Tensor& basis) {
  const int64_t n = x.size(0), heads = x.size(1), bh = basis.size(0);
  const at::Tensor rows = x.to(at::kFloat).reshape({n, bh, heads / bh, x.size(2)});
  return at::einsum("nbpi,bio->nbpo", {rows, basis}).reshape({n, heads, basis.size(2)});
}

TEST(HeadProjectTest, WrapperMatchesTheFormula) {
  at::manual_seed(5);
  const int64_t n = 13;
  // q through its KV head's rows (GQA 4), a strided k through grouped bases, a bf16 v.
  const at::Tensor q = at::randn({n, 32, 128}).to(at::kHalf);
  const at::Tensor k = at::randn({8, n, 128}).to(at::kHalf).transpose(0, 1);
  const at::Tensor v = at::randn({n, 8, 128}).to(at::kBFloat16);
  const at::Tensor bq = at::randn({8, 128, 64}) * 0.1, bk = at::randn({4, 256, 64}) * 0.1,
                   bv = at::randn({8, 128, 64}) * 0.1;
  ASSERT_FALSE(k.is_contiguous());
  const std::vector<at::Tensor> got = paged_cuda::head_project(
      {{q, bq, at::kHalf}, {k.reshape({n, 4, 256}), bk, at::kFloat}, {v, bv, at::kBFloat16}});
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].scalar_type(), at::kHalf);
  EXPECT_EQ(got[1].scalar_type(), at::kFloat);
  EXPECT_EQ(got[2].scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(got[0].to(at::kFloat), formula(q, bq), 2e-3, 2e-3));
  EXPECT_TRUE(at::allclose(got[1], formula(k.reshape({n, 4, 256}), bk), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(got[2].to(at::kFloat), formula(v, bv), 1e-2, 1e-2));
  // Back from the latent width to head_dim, into fp16.
  const at::Tensor lat = at::randn({n, 32, 64}).to(at::kHalf), bo = at::randn({8, 64, 128}) * 0.1;
  const at::Tensor back = paged_cuda::head_project({{lat, bo, at::kHalf}})[0];
  EXPECT_TRUE(at::allclose(back.to(at::kFloat), formula(lat, bo), 2e-3, 2e-3));
  // No rows: empty outputs of the jobs' shapes, nothing launched.
  const std::vector<at::Tensor> none =
      paged_cuda::head_project({{q.narrow(0, 0, 0), bq, at::kHalf}, {v.narrow(0, 0, 0), bv}});
  EXPECT_EQ(none[0].sizes(), (std::vector<int64_t>{0, 32, 64}));
  EXPECT_EQ(none[1].sizes(), (std::vector<int64_t>{0, 8, 64}));
  EXPECT_EQ(none[1].scalar_type(), at::kFloat);
}

TEST(HeadProjectTest, WrapperRefusesBadJobs) {
  const at::Tensor x = at::randn({2, 8, 16}), b = at::randn({4, 16, 8});
  EXPECT_THROW(paged_cuda::head_project({}), Error);
  EXPECT_THROW(paged_cuda::head_project({{x, b}, {x, b}, {x, b}, {x, b}}), Error);
  EXPECT_THROW(paged_cuda::head_project({{x, at::randn({4, 12, 8})}}), Error);  // in 16 vs 12
  EXPECT_THROW(paged_cuda::head_project({{x, at::randn({3, 16, 8})}}), Error);  // 3 ∤ 8 heads
  EXPECT_THROW(paged_cuda::head_project({{x, b.to(at::kHalf)}}), Error);        // fp16 basis
  EXPECT_THROW(paged_cuda::head_project({{x.to(at::kDouble), b}}), Error);      // fp64 x
  EXPECT_THROW(paged_cuda::head_project({{x, b}, {at::randn({3, 8, 16}), b}}), Error);  // rows
  try {
    paged_cuda::head_project({{x, at::randn({3, 16, 8})}});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of basis_heads"), std::string::npos) << e.what();
  }
}

// The launcher's check refuses what the kernel would launch wrong or skip without a word.
TEST(HeadProjectTest, CheckRefusesWhatTheKernelCannotRun) {
  std::vector<float> buf(64, 1.f), table(64, 0.5f);
  const int64_t positions[1] = {0};
  kernels::HeadProjectProblem p;
  p.rows = 1, p.jobs = 1;
  kernels::HeadProjectJob& a = p.job[0];
  a.heads = 2, a.basis_heads = 1, a.in_dim = 8, a.out_dim = 8;
  a.x = buf.data(), a.basis = buf.data(), a.out = buf.data() + 32;
  ASSERT_STREQ(kernels::head_project_check(p), "");
  p.rows = 16 * 65535 + 1;  // blocks of 16 rows past a grid's y
  EXPECT_STREQ(kernels::head_project_check(p), "head_project: at most 1048560 rows");
  p.rows = 16 * 65535;
  EXPECT_STREQ(kernels::head_project_check(p), "");
  p.rows = 1;
  // A rotation with a table missing would be skipped (the kernel tests rope_cos alone).
  a.rope_dim = 8, a.rope_sin = table.data(), a.positions = positions;
  EXPECT_STREQ(kernels::head_project_check(p),
               "head_project: rope_cos, rope_sin and positions go together");
  a.rope_cos = table.data(), a.positions = nullptr;
  EXPECT_STREQ(kernels::head_project_check(p),
               "head_project: rope_cos, rope_sin and positions go together");
  a.positions = positions;
  EXPECT_STREQ(kernels::head_project_check(p), "");
  a.rope_dim = 6;  // does not divide in_dim 8
  EXPECT_STREQ(kernels::head_project_check(p),
               "head_project: a rotation needs an even rope_dim dividing in_dim");
}

}  // namespace
}  // namespace kvbench
