// The kernels suite: its attention against a float64 loop reference, its byte accounting and
// the context grid that reaches beyond the last-level cache.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>

#include "kvbench/attention/reference_attention.h"
#include "kvbench/attention/torch_sdpa.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/param_spec.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/kernels_suite.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {
namespace {

using nlohmann::json;

// A cell's warnings but the one a busy machine can add at any time (the copy bandwidth moved
// between the cell's start and end): tests count the others.
std::vector<std::string> steady_machine_warnings(const CellOutput& out) {
  std::vector<std::string> kept;
  for (const std::string& w : out.warnings)
    if (w.rfind("copy bandwidth moved", 0) != 0) kept.push_back(w);
  return kept;
}

// Plain loops in double precision: softmax(q.k * scale) . v per (batch, head, query).
at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           double scale) {
  auto qd = q.to(at::kDouble).contiguous(), kd = k.to(at::kDouble).contiguous();
  auto vd = v.to(at::kDouble).contiguous();
  const int64_t B = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3), T = k.size(2);
  at::Tensor out = at::zeros({B, H, G, D}, at::kDouble);
  auto qa = qd.accessor<double, 4>(), ka = kd.accessor<double, 4>(), va = vd.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t g = 0; g < G; ++g) {
        std::vector<double> s(T);
        double mx = -INFINITY, sum = 0;
        for (int64_t t = 0; t < T; ++t) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qa[b][h][g][d] * ka[b][h][t][d];
          s[t] = dot * scale;
          mx = std::max(mx, s[t]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (int64_t t = 0; t < T; ++t)
          for (int64_t d = 0; d < D; ++d) oa[b][h][g][d] += s[t] / sum * va[b][h][t][d];
      }
  return out;
}

TEST(ReferenceAttention, MatchesFloat64LoopsOnRandomInputs) {
  auto gen = at::detail::createCPUGenerator(11);
  // Odd sizes on purpose; scaled keys make the softmax far from uniform.
  at::Tensor q = at::randn({2, 3, 4, 64}, gen, at::kFloat);
  at::Tensor k = at::randn({2, 3, 37, 64}, gen, at::kFloat) * 3;
  at::Tensor v = at::randn({2, 3, 37, 64}, gen, at::kFloat);
  const double scale = 1 / std::sqrt(64.0);
  at::Tensor got = decode_attention_reference(q, k, v, scale).to(at::kDouble);
  at::Tensor want = naive_attention(q, k, v, scale);
  // fp32 accumulation over 64-wide dots and 37 tokens: relative error well under 1e-5.
  double rel = ((got - want).norm() / want.norm()).item<double>();
  EXPECT_LT(rel, 1e-5);
  EXPECT_GT(want.abs().max().item<double>(), 0.1);  // not a trivially small output
}

// PyTorch's fused SDPA (libtorch 2.x) against the reference attention, GQA, causal and one
// query; on 1.13 it reports itself unavailable and returns nothing.
TEST(TorchSdpa, MatchesTheReferenceWhereAvailable) {
  auto gen = at::detail::createCPUGenerator(41);
  const at::Tensor q = at::randn({8, 33, 64}, gen), k = at::randn({2, 33, 64}, gen),
                   v = at::randn({2, 33, 64}, gen);
  const at::Tensor got = torch_sdpa(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), true);
  if (!torch_sdpa_available()) {
    EXPECT_FALSE(got.defined());
    GTEST_SKIP() << "this libtorch has no scaled_dot_product_attention";
  }
  const at::Tensor want = block_attention_reference(q, k, v, 1.0 / 8.0);
  EXPECT_LT(((got.squeeze(0) - want).norm() / want.norm()).item<double>(), 1e-5);
  const at::Tensor last = q.narrow(1, 32, 1);
  const at::Tensor one = torch_sdpa(last.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), false);
  const at::Tensor one_want = block_attention_reference(last, k, v, 1.0 / 8.0);
  EXPECT_LT(((one.squeeze(0) - one_want).norm() / one_want.norm()).item<double>(), 1e-5);
}

TEST(ReferenceAttention, RejectsMismatchedShapes) {
  at::Tensor q = at::randn({1, 2, 1, 64}), k = at::randn({1, 2, 8, 64});
  EXPECT_THROW(decode_attention_reference(q, k, at::randn({1, 2, 9, 64}), 1.0), Error);
  EXPECT_THROW(decode_attention_reference(at::randn({1, 3, 1, 64}), k, k, 1.0), Error);
}

// A point whose p90 is more than 3x its median is named (the worst of them) with the count;
// steady points and records without times say nothing.
TEST(KernelsSuite, WarnsOfWidelySpreadPoints) {
  auto point = [](int64_t context, double median, double p90, double max) {
    return nlohmann::json{
        {"kind", "decode_attention"},
        {"context", context},
        {"kv_heads", 2},
        {"time_s", {{"min", median * 0.9}, {"median", median}, {"p90", p90}, {"max", max}}}};
  };
  std::vector<nlohmann::json> records = {
      {{"kind", "copy_bandwidth"},
       {"phase", "before"},
       {"time_s", {{"min", 1e-3}, {"median", 1e-3}, {"p90", 1.1e-3}, {"max", 1.2e-3}}}},
      point(1024, 50e-6, 60e-6, 70e-6),
      {{"kind", "note without times"}}};
  EXPECT_EQ(KernelsSuite::spread_warning(records), "");
  records.push_back(point(2048, 50e-6, 400e-6, 8000e-6));
  records.push_back(point(4096, 100e-6, 350e-6, 500e-6));
  const std::string w = KernelsSuite::spread_warning(records);
  EXPECT_NE(w.find("2 of 4 timed points spread widely (worst: context 2048, kv_heads 2"),
            std::string::npos)
      << w;
  EXPECT_NE(w.find("p90 8.0x the median"), std::string::npos) << w;
}

TEST(KernelsSuite, AutoContextsReachTheCacheMultiple) {
  // 8 KiB per token (2 x 8 heads x 128 dims x 4 bytes), 32 MiB cache, 4x: 16384 tokens.
  const auto linear = [](int64_t c) { return uint64_t(c) * 8192; };
  auto c = KernelsSuite::auto_contexts(linear, 32u << 20, 4.0);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c.front(), 1024);
  EXPECT_EQ(c.back(), 16384);
  EXPECT_EQ(c.size(), 5u);
  EXPECT_EQ(KernelsSuite::auto_contexts(linear, 0, 4.0), std::vector<int64_t>{1024});
}

// KIVI's one token is its fp16 window, as large as fp16's token: the contexts grow by the
// formula at each context, so the smaller format gets the longer list, as docs/config.md says.
TEST(KernelsSuite, AutoContextsFollowTheFormulaNotItsFirstToken) {
  auto plan_for = [](const json& method) {
    const json p = resolve_params(
        json{{"name", "kernels"}, {"kv_heads", {8}}, {"head_dim", 128}, {"dtype", "float16"}},
        KernelsSuite::param_specs(), "suites[0]");
    return KernelsSuite::planned_contexts(p, resolve_method(method, "m"), 32u << 20);
  };
  // fp16: 4 KiB per token, 128 MiB (4 x 32 MiB) at 32k.
  EXPECT_EQ(plan_for({{"name", "fp16"}}).back(), 32768);
  // kivi-4, about a quarter of that per token past its window: 128k.
  EXPECT_EQ(plan_for({{"name", "kivi-4"}}).back(), 131072);
}

TEST(KernelsSuite, PlansWithTheDetectedCacheUnlessOnlyCpuidOvershoots) {
  Environment env;
  env.cores = 2;
  env.llc_bytes = uint64_t{508} << 20;
  env.llc_source = "sysfs";  // the kernel's topology is trusted as it is
  EXPECT_EQ(KernelsSuite::planned_llc("auto", env).bytes, env.llc_bytes);
  EXPECT_TRUE(KernelsSuite::planned_llc("auto", env).warning.empty());
  env.llc_source = "cpuid";  // a VM's synthesized figure: capped at 32 MiB per core
  const auto capped = KernelsSuite::planned_llc("auto", env);
  EXPECT_EQ(capped.bytes, uint64_t{64} << 20);
  EXPECT_EQ(capped.source, "cpuid (capped)");
  EXPECT_NE(capped.warning.find("508.00 MiB"), std::string::npos) << capped.warning;
  EXPECT_NE(capped.warning.find("set llc_bytes"), std::string::npos) << capped.warning;
  env.llc_bytes = uint64_t{48} << 20;  // plausible for two cores: kept
  EXPECT_EQ(KernelsSuite::planned_llc("auto", env).bytes, env.llc_bytes);
  EXPECT_EQ(KernelsSuite::planned_llc("auto", env).source, "cpuid");
  EXPECT_TRUE(KernelsSuite::planned_llc("auto", env).warning.empty());
  env.cores = 0;  // unknown cores count as one
  env.llc_bytes = uint64_t{508} << 20;
  EXPECT_EQ(KernelsSuite::planned_llc("auto", env).bytes, KernelsSuite::kCpuidLlcPerCore);
  // The parameter wins over any detection.
  const auto given = KernelsSuite::planned_llc(12345, env);
  EXPECT_EQ(given.bytes, 12345u);
  EXPECT_EQ(given.source, "llc_bytes parameter");
  EXPECT_TRUE(given.warning.empty());
}

struct SuiteRun {
  RunSpec spec;
  Environment env;
  CellOutput out;
};

SuiteRun run_kernels(const json& suite, const json& method_entry = {{"name", "full"}},
                     const std::string& device = "cpu", const Environment* env = nullptr) {
  SuiteRun r{parse_run_spec(json{{"suites", {suite}}, {"threads", 1}}, "t"), {}, {}};
  r.spec.device = device;
  r.env.llc_bytes = 1 << 19;  // pretend 512 KiB so small points count as beyond the cache
  if (env) r.env = *env;
  r.env.threads = 1;
  const json method = resolve_method(method_entry, "methods[0]");
  const json& params = r.spec.suites[0].params;
  NullProgress progress;
  std::string id = "kernels.test";
  ModelProvider model(r.spec.model);
  CellContext ctx{id, r.spec, r.env, method, params, 5, progress, model};
  r.out = KernelsSuite().run(ctx);
  return r;
}

TEST(KernelsSuite, RecordsRawSamplesBytesAndBandwidth) {
  auto r = run_kernels(json::parse(
      R"({"name": "kernels", "contexts": [100, 2048], "kv_heads": [1, 2], "head_dim": 64,
          "group_size": 2, "warmup": 1, "repeats": 4, "dtype": "float32"})"));
  const auto& recs = r.out.records;
  ASSERT_EQ(recs.size(), 2u + 4u);  // copy before/after + 2 x 2 points
  EXPECT_EQ(recs.front()["kind"], "copy_bandwidth");
  EXPECT_EQ(recs.back()["kind"], "copy_bandwidth");
  int attention = 0;
  for (const auto& rec : recs) {
    ASSERT_EQ(rec["samples_s"].size(), 4u);
    for (double t : rec["samples_s"]) EXPECT_GT(t, 0.0);
    if (rec["kind"] != "decode_attention") continue;
    ++attention;
    const int64_t ctx = rec["context"], heads = rec["kv_heads"];
    const uint64_t kv = 2ull * heads * ctx * 64 * 4;
    EXPECT_EQ(rec["working_set_bytes"], kv);
    EXPECT_EQ(rec["bytes_moved"], kv + 2ull * heads * 2 * 64 * 4);  // + q read + out written
    const double gbps =
        rec["bytes_moved"].get<double>() / rec["time_s"]["median"].get<double>() / 1e9;
    EXPECT_NEAR(rec["gbps"].get<double>(), gbps, 1e-9 * gbps);
    EXPECT_NEAR(rec["fraction_of_copy_bandwidth"].get<double>(),
                gbps / r.out.summary["copy_bandwidth_gbps"].get<double>(), 1e-9);
    EXPECT_NEAR(rec["llc_multiple"].get<double>(), kv / double(1 << 19), 1e-12);
  }
  EXPECT_EQ(attention, 4);
  EXPECT_EQ(r.out.summary["points"], 4);
  EXPECT_GT(r.out.summary["copy_bandwidth_gbps"].get<double>(), 0.0);
  EXPECT_NEAR(r.out.summary["max_llc_multiple"].get<double>(), 2.0 * 2 * 2048 * 64 * 4 / (1 << 19),
              1e-12);
  // 2 MiB = 4x the pretend cache: no warning about the cache's size (the real cache may hold
  // it, so its speed may be beyond the copy bandwidth, which is warned about). A busy machine
  // may also spread the timed samples, or move the copy bandwidth, which is warned about too.
  for (const std::string& w : steady_machine_warnings(r.out))
    if (w.find("spread widely") == std::string::npos)
      EXPECT_NE(w.find("larger than llc_bytes says"), std::string::npos) << w;
  const Table table = KernelsSuite().summary_table(r.out);
  EXPECT_EQ(table.rows.size(), 5u);              // 4 points + copy
  EXPECT_EQ(table.columns.back(), "% copy BW");  // no retained steps: no "vs full" column
}

// A CPUID-only cache figure that overshoots is capped in the plan, and the cell says so.
TEST(KernelsSuite, ACappedCpuidCacheIsRecordedAndWarned) {
  Environment env;
  env.cores = 1;
  env.llc_bytes = uint64_t{1} << 30;
  env.llc_source = "cpuid";
  const json suite = json::parse(
      R"({"name": "kernels", "contexts": [256], "kv_heads": [1], "head_dim": 64,
          "warmup": 0, "repeats": 2, "dtype": "float32", "min_llc_multiple": 0})");
  auto r = run_kernels(suite, {{"name", "full"}}, "cpu", &env);
  EXPECT_EQ(r.out.summary["llc_bytes"], KernelsSuite::kCpuidLlcPerCore);
  EXPECT_EQ(r.out.summary["llc_source"], "cpuid (capped)");
  const std::vector<std::string> warnings = steady_machine_warnings(r.out);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("CPUID reports a 1.00 GiB"), std::string::npos) << warnings[0];
  // min_llc_multiple 0 silences the cache warning, but a point inside the cache (256 tokens
  // here) never counts as beyond it.
  EXPECT_TRUE(r.out.summary["best_fraction_of_copy_bandwidth_beyond_llc"].is_null());
  // The copy buffers follow the planned size: 64 MiB minimum here.
  EXPECT_EQ(r.out.records.front()["bytes"], uint64_t{64} << 20);
}

// The copy buffers are each at least the LLC, whatever min_llc_multiple says: at 0.25 of a
// 128 MiB cache, 32 MiB (64 MiB by the floor) buffers would copy inside the cache.
TEST(KernelsSuite, TheCopyBuffersAreNeverSmallerThanTheCache) {
  const json suite = json::parse(
      R"({"name": "kernels", "contexts": [256], "kv_heads": [1], "head_dim": 64, "warmup": 0,
          "repeats": 1, "dtype": "float32", "min_llc_multiple": 0.25, "llc_bytes": 134217728})");
  auto r = run_kernels(suite);
  EXPECT_EQ(r.out.records.front()["bytes"], uint64_t{128} << 20);
}

// GEAR forms a block per append: its K/V go in as one prefill, past the suite's 4096-token
// slices, so the store holds what its formula counts.
TEST(KernelsSuite, GearAtLongContextsStoresItsFormula) {
  const json suite = json::parse(
      R"({"name": "kernels", "contexts": [8192], "kv_heads": [1], "head_dim": 64, "warmup": 0,
          "repeats": 1, "min_llc_multiple": 0})");
  auto r = run_kernels(suite, {{"name", "gear"}});
  int points = 0;
  for (const json& rec : r.out.records) {
    if (rec["kind"] != "decode_attention") continue;
    ++points;
    EXPECT_EQ(rec["working_set_bytes"], rec["nominal_bytes"]);
  }
  EXPECT_EQ(points, 1);
}

// Methods whose policy acts during decode get retained-token step records beside the codec's
// own points; the kept count is the policy's, measured from the cache after the steps.
TEST(KernelsSuite, RetainedTokenStepsForPoliciesThatActDuringDecode) {
  const json suite = json::parse(
      R"({"name": "kernels", "contexts": [300, 1000], "kv_heads": [2], "head_dim": 64,
          "warmup": 1, "repeats": 3})");
  struct Case {
    json method;
    int64_t kept_at_1000;  // -1: no retained records
    int64_t read_at_1000;  // the tokens its last step read: what the baseline holds
  };
  for (const Case& c : std::vector<Case>{
           {{{"name", "streamingllm"}, {"sinks", 4}, {"window", 60}}, 64, 64},
           {{{"name", "h2o"}, {"heavy", 32}, {"recent", 32}, {"codec", "int8"}}, 64, 64},
           // The timed steps centre on 1000: fed 1000 - 1 - 3/2 = 998, then 4 appended, 1002
           // kept; 3 whole pages of 16 and the newest page's 10 tokens (992 .. 1001).
           {{{"name", "quest"}, {"budget", 64}, {"dense_layers", 0}}, 1002, 3 * 16 + 10},
           {{{"name", "snapkv"}, {"budget", 64}}, -1, -1}}) {
    auto r = run_kernels(suite, c.method);
    std::vector<json> retained;
    for (const auto& rec : r.out.records) {
      if (rec["kind"] == "retained_decode") retained.push_back(rec);
    }
    if (c.kept_at_1000 < 0) {
      EXPECT_TRUE(retained.empty()) << c.method.dump();
      continue;
    }
    ASSERT_EQ(retained.size(), 2u) << c.method.dump();
    EXPECT_EQ(retained[1]["context"], 1000);
    EXPECT_EQ(retained[1]["kept_tokens"], c.kept_at_1000) << c.method.dump();
    EXPECT_EQ(retained[1]["read_tokens"], c.read_at_1000) << c.method.dump();
    for (const auto& rec : retained) {
      EXPECT_EQ(rec["policy"], c.method["name"]);
      EXPECT_GT(rec["time_s"]["median"].get<double>(), 0.0);
      EXPECT_NEAR(rec["ratio_to_full_at_kept"].get<double>(),
                  rec["time_s"]["median"].get<double>() /
                      rec["full_at_kept_time_s"]["median"].get<double>(),
                  1e-9);
    }
    const Table table = KernelsSuite().summary_table(r.out);
    EXPECT_EQ(table.rows.size(), 2u + 2u + 1u);
    EXPECT_EQ(table.columns.back(), "vs full");
  }
}

TEST(KernelsSuite, WarnsWhenWorkingSetsStayInCache) {
  auto r = run_kernels(json::parse(
      R"({"name": "kernels", "contexts": [64], "kv_heads": [1], "warmup": 0, "repeats": 1})"));
  const std::vector<std::string> warnings = steady_machine_warnings(r.out);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("cache numbers"), std::string::npos);
}

TEST(KernelsSuite, WarnsWhenTheCopyBandwidthMovedDuringTheCell) {
  EXPECT_EQ(KernelsSuite::copy_drift_warning(30.0, 35.0), "");  // within 20%
  EXPECT_EQ(KernelsSuite::copy_drift_warning(35.0, 30.0), "");
  const std::string w = KernelsSuite::copy_drift_warning(23.6, 34.0);
  EXPECT_NE(w.find("copy bandwidth moved from 23.6 GB/s before the points to 34.0 GB/s"),
            std::string::npos)
      << w;
  EXPECT_NE(KernelsSuite::copy_drift_warning(34.0, 23.6), "");
}

TEST(KernelsSuite, ImpossibleMemoryRequestFailsClearly) {
  try {
    run_kernels(json::parse(R"({"name": "kernels", "contexts": [16777216], "kv_heads": [256],
                                "warmup": 0, "repeats": 1})"));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("kernels: context 16777216 x kv_heads 256 (K and V) needs 2.00 TiB"),
              std::string::npos)
        << msg;
  }
}

// The decode kernels take at most 8 query heads per KV head: a larger group_size on cuda is
// refused when the config is resolved, naming the key, not at the first launch.
TEST(KernelsSuite, AGroupTheGpuKernelsDoNotTakeIsAConfigError) {
  json params = resolve_suite({{"name", "kernels"}, {"group_size", 16}}, "suites[0]");
  try {
    KernelsSuite::check_method(params, {{"name", "full"}}, "cuda");
    FAIL() << "group_size 16 on cuda";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("group_size"), std::string::npos) << e.what();
  }
  params["group_size"] = 8;
  EXPECT_NO_THROW(KernelsSuite::check_method(params, {{"name", "full"}}, "cuda"));
}

// The reference backend attends an fp32 copy of a sequence's K/V beside the cache: the estimate
// counts it (KV heads x context x head_dim x K and V x 4 bytes at the largest point).
TEST(KernelsSuite, TheEstimateCountsTheReferenceBackendsFp32Copy) {
  const json params = resolve_suite({{"name", "kernels"},
                                     {"contexts", {1024, 65536}},
                                     {"kv_heads", {2, 8}},
                                     {"llc_bytes", 1 << 20}},
                                    "suites[0]");
  const json method = resolve_method({{"name", "int4"}}, "methods[0]");
  Environment env;
  EstimateContext cpu{params, method, nullptr, 0, env};
  EstimateContext reference = cpu;
  reference.reference_attention = true;
  const uint64_t copy = 8ull * 65536 * params["head_dim"].get<uint64_t>() * 2 * sizeof(float);
  const uint64_t plain = KernelsSuite().estimate_bytes(cpu);
  const uint64_t with_copy = KernelsSuite().estimate_bytes(reference);
  // The cache's peak (at most `plain`) plus the copy, or the copy buffers when larger.
  EXPECT_GT(with_copy, plain);
  EXPECT_GE(with_copy, copy);
  EXPECT_LE(with_copy, copy + plain);
}

// On a GPU the suite times the paged decode kernel per format, beside the device's copy
// bandwidth and PyTorch's SDPA; the bytes are the pages, rings and scales the cache holds.
TEST(KernelsSuiteGpu, TimesThePagedKernelsAgainstCopyBandwidthAndSdpa) {
  const json suite = json::parse(
      R"({"name": "kernels", "contexts": [1000, 4096], "kv_heads": [8], "head_dim": 128,
          "group_size": 4, "batch": 2, "warmup": 1, "repeats": 3})");
  if (!at::hasCUDA()) {
    try {
      run_kernels(suite, {{"name", "full"}}, "cuda");
      FAIL() << "expected an Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("needs a libtorch with CUDA"), std::string::npos)
          << e.what();
    }
    GTEST_SKIP() << "libtorch has no CUDA: only the refusal is checked";
  }
  for (const char* method : {R"({"name": "full"})", R"({"name": "kivi-2"})"}) {
    auto r = run_kernels(suite, json::parse(method), "cuda");
    const auto& recs = r.out.records;
    ASSERT_EQ(recs.size(), 2u + 2u) << method;
    for (const auto& rec : recs) {
      if (rec["kind"] != "decode_attention") continue;
      EXPECT_EQ(rec["backend"], "cuda");
      const int64_t ctx = rec["context"];
      if (std::string(method).find("full") != std::string::npos) {  // fp16 pages of 32 tokens
        const uint64_t pages = 2 * ((ctx + 31) / 32);
        EXPECT_EQ(rec["working_set_bytes"], pages * 32 * 8 * 128 * 2 * 2);
      }
      // The slots holding tokens are read, not a page's or ring's empty ones; q and the
      // output are fp16, [batch, heads, head_dim] each.
      EXPECT_EQ(rec["bytes_moved"].get<uint64_t>(), rec["working_set_bytes"].get<uint64_t>() -
                                                        rec["padding_bytes"].get<uint64_t>() +
                                                        2ull * 2 * 32 * 128 * 2);
      if (std::string(method).find("full") != std::string::npos)
        EXPECT_EQ(rec["padding_bytes"].get<uint64_t>(),
                  2ull * ((ctx + 31) / 32 * 32 - ctx) * 8 * 128 * 2 * 2);
      EXPECT_NEAR(rec["gbps"].get<double>(),
                  rec["bytes_moved"].get<double>() / rec["time_s"]["median"].get<double>() / 1e9,
                  1e-6 * rec["gbps"].get<double>());
      ASSERT_TRUE(rec.contains("sdpa")) << "libtorch 2.x has SDPA";
      EXPECT_GT(rec["ratio_to_sdpa"].get<double>(), 0.0);
    }
    EXPECT_GT(r.out.summary["copy_bandwidth_gbps"].get<double>(), 100.0);  // any GPU's HBM
  }
}

TEST(SuiteRegistry, EveryRegisteredSuiteHasValidDefaults) {
  for (const auto& info : suite_catalog()) {
    // accuracy has no default data: it needs a task or a data_file.
    json entry = {{"name", info.name}};
    if (info.name == "accuracy") entry["task"] = "passkey";
    json resolved = resolve_suite(entry, "suites[0]");
    for (const auto& p : info.params) {
      EXPECT_NO_THROW(check_param(p, p.default_value, info.name + "." + p.name));
      EXPECT_FALSE(p.help.empty()) << p.name;
      EXPECT_TRUE(resolved.contains(p.name));
    }
    EXPECT_NE(info.make(), nullptr);
  }
  EXPECT_THROW(find_suite("nope"), Error);
  EXPECT_THROW(resolve_suite(json{{"name", "accuracy"}}, "suites[0]"), ConfigError);
}

}  // namespace
}  // namespace kvbench
