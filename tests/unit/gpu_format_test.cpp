// The GPU storage formats are the CPU codecs' formats: for every format the GPU kernels read,
// the tokens the paged-cache builder encodes (the data the GPU tests feed the kernels and the
// float64 reference) decode to the same values as the CPU codec of the same method, which
// the reference backend attends over. So a GPU kernel that matches its test's reference
// matches kvbench's reference backend. Runs without a GPU (host code only).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <random>
#include <string>
#include <vector>

#include "kvbench/kv/codec.h"
#include "kvbench/kv/method_registry.h"
#include "paged_cache_builder.h"

namespace kvbench {
namespace {

using kernels::KvFormat;

struct FormatCase {
  KvFormat format;
  const char* method;  // the registry entry with the same format
};

class GpuFormatTest : public ::testing::TestWithParam<FormatCase> {};

TEST_P(GpuFormatTest, BuilderDecodesLikeTheCpuCodec) {
  const FormatCase& c = GetParam();
  const int kv_heads = 2, D = 128, T = 300, page = 32, residual = 128;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> keys(size_t(kv_heads) * T * D), values(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i] = normal(rng) * (i % D % 13 == 0 ? 6.f : 1.f);  // outlier channels, as real keys have
    values[i] = normal(rng);
  }
  gpu_test::HostPagedCache cache = gpu_test::build_paged_cache(
      c.format, kv_heads, D, page, residual, {keys}, {values}, {T}, rng);

  auto codec = make_codec(resolve_method(nlohmann::json::parse(c.method), "methods[0]"), at::kHalf);
  for (bool is_key : {true, false}) {
    auto store = is_key ? codec->make_key_store(kv_heads, D) : codec->make_value_store(kv_heads, D);
    const std::vector<float>& x = is_key ? keys : values;
    store->append(
        at::from_blob(const_cast<float*>(x.data()), {kv_heads, T, D}, at::kFloat).clone());
    at::Tensor cpu = store->dequantize().contiguous();
    const std::vector<float>& gpu = is_key ? cache.k_decoded[0] : cache.v_decoded[0];
    const float* ref = cpu.data_ptr<float>();
    int mismatches = 0;
    for (size_t i = 0; i < gpu.size(); ++i) {
      const float tol = 2e-7f * std::max(1.f, std::fabs(ref[i]));
      if (std::fabs(gpu[i] - ref[i]) > tol && mismatches++ < 5)
        ADD_FAILURE() << (is_key ? "key" : "value") << " element " << i << " (head " << i / (T * D)
                      << ", token " << i / D % T << ", channel " << i % D
                      << "): GPU format decodes to " << gpu[i] << ", CPU codec to " << ref[i]
                      << " (input " << x[i] << ")";
    }
    EXPECT_EQ(mismatches, 0) << c.method << (is_key ? " keys" : " values");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, GpuFormatTest,
    ::testing::Values(FormatCase{KvFormat::kFp16, R"({"name": "fp16"})"},
                      FormatCase{KvFormat::kBf16, R"({"name": "bf16"})"},
                      FormatCase{KvFormat::kInt8, R"({"name": "int8"})"},
                      FormatCase{KvFormat::kInt4, R"({"name": "int4", "symmetric": true})"},
                      // The builder scales fp8 by amax / 448 (the kernels'
                      // tests need no headroom): the codec likewise.
                      FormatCase{
                          KvFormat::kFp8,
                          R"({"name": "fp8", "key_amax_divisor": 448, "value_amax_divisor": 448})"},
                      FormatCase{KvFormat::kKivi2, R"({"name": "kivi-2"})"},
                      FormatCase{KvFormat::kKivi4, R"({"name": "kivi-4"})"},
                      FormatCase{KvFormat::kInt4Asym, R"({"name": "int4"})"},
                      FormatCase{KvFormat::kInt2, R"({"name": "int2"})"}),
    [](const ::testing::TestParamInfo<FormatCase>& i) {
      std::string n = kernels::format_name(i.param.format);
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n;
    });

}  // namespace
}  // namespace kvbench
