// The latency and throughput suites on a tiny in-memory model: raw samples, derived metrics
// consistent with them, memory estimates, and the model provider's choices.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "kvbench/core/error.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/model/chat_format.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"
#include "kvbench/suites/accuracy_suite.h"
#include "kvbench/suites/fidelity_suite.h"
#include "kvbench/suites/latency_suite.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/output_length_suite.h"
#include "kvbench/suites/preparation.h"
#include "kvbench/suites/runner.h"
#include "kvbench/suites/throughput_suite.h"
#include "kvbench/suites/workload.h"
#include "kvbench/workloads/longbench.h"
#include "kvbench/workloads/task_factory.h"
#include "suite_harness.h"

namespace kvbench {
namespace {

using nlohmann::json;

// The suites here run on tiny-qwen3.
struct Harness : testing_support::Harness {
  explicit Harness(const json& suite) : testing_support::Harness(suite, "tiny-qwen3") {}
};

TEST(LatencySuite, KeepsEverySampleAndConsistentSummaries) {
  Harness h(json::parse(R"({"name": "latency", "prompt_tokens": 12, "new_tokens": 5,
                            "batch": 2, "warmup": 1, "repeats": 3})"));
  LatencySuite suite;
  CellOutput out = h.run(suite);
  std::map<std::string, json> by_kind;
  for (const auto& r : out.records) by_kind[r["kind"]] = r;
  ASSERT_EQ(by_kind.size(), 4u);
  EXPECT_EQ(by_kind["ttft"]["samples_s"].size(), 6u);  // 3 repeats x 2 requests
  EXPECT_EQ(by_kind["tpot"]["samples_s"].size(), 6u);
  EXPECT_EQ(by_kind["itl"]["samples_s"].size(), 24u);  // 4 gaps per request
  EXPECT_EQ(by_kind["e2e"]["samples_s"].size(), 6u);
  // One generation (the warm-up not counted) gave 2 requests' samples, 2 x 4 gaps for ITL.
  EXPECT_EQ(by_kind["ttft"]["samples_per_generation"], 2);
  EXPECT_EQ(by_kind["itl"]["samples_per_generation"], 8);
  for (size_t i = 0; i < 6; ++i) {
    const double ttft = by_kind["ttft"]["samples_s"][i], e2e = by_kind["e2e"]["samples_s"][i];
    const double tpot = by_kind["tpot"]["samples_s"][i];
    EXPECT_GT(ttft, 0);
    EXPECT_GE(e2e, ttft);
    EXPECT_NEAR(tpot, (e2e - ttft) / 4, 1e-12);
  }
  EXPECT_EQ(out.summary["requests"], 6);
  EXPECT_EQ(out.summary["ttft_s"]["n"], 6);
  // 2 sequences x (12 + 4 fed back) tokens x 4 layers x 2 (K, V) x 2 heads x 64 dims x bf16.
  EXPECT_EQ(out.summary["kv_bytes_peak"], 2u * 16 * 4 * 2 * 2 * 64 * 2);
  const Table table = suite.summary_table(out);
  EXPECT_EQ(table.rows.size(), 4u);
  // The cache's peak under the table: 64 KiB of bf16 values, 16 bits each, as fp16 would be.
  ASSERT_EQ(table.notes.size(), 1u);
  EXPECT_NE(table.notes[0].find("KV cache at peak: 64.00 KiB for 32 tokens"), std::string::npos)
      << table.notes[0];
  EXPECT_NE(table.notes[0].find("(16.00 bits/value, 1.00x fp16)"), std::string::npos)
      << table.notes[0];
}

TEST(LatencySuite, TextPromptsGoThroughTheModelsTokenizer) {
  Harness h(json::parse(R"({"name": "latency", "prompt_text": "The pass key is 12345.",
                            "new_tokens": 3, "warmup": 0, "repeats": 1})"));
  LatencySuite suite;
  CellOutput out = h.run(suite);
  const auto ids = h.model.tokenizer().encode("The pass key is 12345.", true);
  EXPECT_EQ(out.summary["prompt_tokens"], ids.size());
  EXPECT_GT(ids.size(), 3u);
  EXPECT_EQ(h.model.tokenizer().decode(ids, /*skip_special_tokens=*/true),
            "The pass key is 12345.");
}

TEST(ThroughputSuite, GridPointsWithPrefillAndDecodeRates) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [1, 3], "prompt_tokens": [8],
                            "new_tokens": [4, 6], "warmup": 0, "repeats": 2})"));
  ThroughputSuite suite;
  CellOutput out = h.run(suite);
  ASSERT_EQ(out.records.size(), 4u);
  for (const auto& r : out.records) {
    const int64_t b = r["batch"], n = r["new_tokens"];
    EXPECT_EQ(r["samples_s"].size(), size_t(2 * (n - 1)));  // decode steps of both repeats
    EXPECT_EQ(r["samples_per_generation"], n - 1);          // resampled as one unit
    EXPECT_EQ(r["prefill_samples_s"].size(), 2u);
    EXPECT_NEAR(r["decode_tok_s"].get<double>(), b / r["decode_step_s"]["median"].get<double>(),
                1e-9 * r["decode_tok_s"].get<double>());
    EXPECT_NEAR(r["prefill_tok_s"].get<double>(), b * 8 / r["prefill_s"]["median"].get<double>(),
                1e-9 * r["prefill_tok_s"].get<double>());
    EXPECT_EQ(r["kv_bytes"], uint64_t(b) * (8 + n - 1) * 4 * 2 * 2 * 64 * 2);
    // A decode step reads every weight (fp32 on the CPU; of an untied embedding only the
    // batch's rows: Transformer.ADecodeStepReadsOnlyItsBatchsRowsOfAnUntiedEmbedding) and the
    // cache at least, as the median step holds it: steps 1 .. n-1 hold 9 .. 7 + n tokens, the
    // median 8 + n/2 (the peak, 7 + n, is the last step's alone).
    EXPECT_EQ(r["decode_bytes_per_step"], h.model.get().decode_step_weight_bytes(b) +
                                              uint64_t(b) * (8 + n / 2) * 4 * 2 * 2 * 64 * 2);
    EXPECT_NEAR(
        r["decode_gbps"].get<double>(),
        r["decode_bytes_per_step"].get<double>() / r["decode_step_s"]["median"].get<double>() / 1e9,
        1e-9 * r["decode_gbps"].get<double>());
  }
  EXPECT_EQ(out.summary["points"], 4);
  // bf16 full cache: 16 bits per value, half of nothing saved against fp16, formula agrees.
  const json& mem = out.records[0]["kv_memory"];
  EXPECT_DOUBLE_EQ(mem["bits_per_value"].get<double>(), 16.0);
  EXPECT_DOUBLE_EQ(mem["ratio_to_fp16"].get<double>(), 1.0);
  EXPECT_FALSE(mem["nominal_mismatch"].get<bool>());
}

int64_t tiny_vocab() {
  Harness h(json::parse(R"({"name": "latency"})"));
  return h.model.get().config().vocab_size;
}

// Random-id prompts come from the run's seed, not the cell's (which differs per method): every
// method of a run times the same ids, and another run seed draws others.
TEST(ThroughputSuite, EveryMethodOfARunTimesTheSamePrompts) {
  const json params = json::parse(R"({"name": "throughput", "batch": [2], "prompt_tokens": [8],
                                      "new_tokens": [3], "warmup": 1, "repeats": 2})");
  auto hashes = [&](const json& method, uint64_t cell_seed, uint64_t run_seed) {
    Harness h(params);
    h.method = resolve_method(method, "methods[0]");
    h.cell_seed = cell_seed;
    h.spec.seed = run_seed;
    ThroughputSuite suite;
    return h.run(suite).records.at(0).at("prompt_hashes");
  };
  const json full = hashes({{"name", "full"}}, 7, 0);
  ASSERT_EQ(full.size(), 2u);  // the timed generations only
  EXPECT_NE(full[0], full[1]);
  EXPECT_EQ(hashes({{"name", "int8"}}, 12345, 0), full);
  EXPECT_NE(hashes({{"name", "full"}}, 7, 1), full);
  // The hash is of the ids the generation was given: generation r (warm-ups first) draws them
  // with the run seed + r.
  EXPECT_EQ(full[0], prompts_hash(synthetic_prompts(2, 8, tiny_vocab(), 1)));
}

TEST(LatencySuite, EveryMethodOfARunTimesTheSamePrompts) {
  const json params = json::parse(R"({"name": "latency", "prompt_tokens": 8, "new_tokens": 3,
                                      "batch": 2, "warmup": 0, "repeats": 2})");
  auto hashes = [&](const json& method, uint64_t cell_seed) {
    Harness h(params);
    h.method = resolve_method(method, "methods[0]");
    h.cell_seed = cell_seed;
    LatencySuite suite;
    return h.run(suite).summary.at("prompt_hashes");
  };
  const json full = hashes({{"name", "full"}}, 7);
  ASSERT_EQ(full.size(), 2u);
  EXPECT_EQ(hashes({{"name", "int4"}}, 99), full);
  EXPECT_EQ(full[1], prompts_hash(synthetic_prompts(2, 8, tiny_vocab(), 1)));
}

// The last warmup generation is split into phases; without a warmup there is none to split
// (timed generations are never marked).
TEST(ThroughputSuite, SaysWhereADecodeStepGoesFromTheWarmup) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [2], "prompt_tokens": [8],
                            "new_tokens": [5], "warmup": 1, "repeats": 1})"));
  ThroughputSuite suite;
  CellOutput out = h.run(suite);
  ASSERT_EQ(out.records.size(), 1u);
  const json& p = out.records[0]["phases"];
  ASSERT_TRUE(p.is_object()) << out.records[0].dump();
  EXPECT_EQ(p["clock"], "wall clock");
  double shares = 0, total = 0;
  for (const std::string& name : forward_phase_names()) {
    ASSERT_TRUE(p["decode_step_s"].contains(name)) << name;
    total += p["decode_step_s"][name].get<double>();
    shares += p["decode_share"][name].get<double>();
    EXPECT_GE(p["prefill_s"][name].get<double>(), 0.0);
  }
  EXPECT_NEAR(shares, 1.0, 1e-9);
  EXPECT_NEAR(p["decode_total_s"].get<double>(), total, 1e-12);
  EXPECT_GT(p["decode_step_s"]["attend"].get<double>(), 0.0);
  EXPECT_GT(p["prefill_s"]["mlp"].get<double>(), 0.0);
  EXPECT_EQ(p["decode_steps"], 3);  // 4 decode steps, the first left out
  EXPECT_GT(p["split_step_s"].get<double>(), 0.0);
  const Table table = suite.summary_table(out);
  EXPECT_EQ(table.rows[0][6], format_fixed(p["decode_share"]["attend"].get<double>() * 100, 1));

  Harness none(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [8],
                               "new_tokens": [3], "warmup": 0, "repeats": 1})"));
  EXPECT_TRUE(none.run(suite).records[0]["phases"].is_null());
}

// The mismatch warning says by how much, and why when eviction is the reason (pages held for
// tokens some layer or head still keeps); nothing when formula and measurement agree.
TEST(KvMemoryWarning, SaysBothSizesAndWhyPagesHoldMore) {
  json m = {{"nominal_mismatch", true},
            {"measured", {{"total", 3072}, {"padding", 1024}}},
            {"nominal", {{"total", 1024}}},
            {"kept_tokens", {{"fraction", 0.4}}}};
  EXPECT_EQ(nominal_mismatch_warning(m),
            "measured KV bytes differ from the method's formula by more than 1%: 2.00 KiB "
            "held (not counting 1.00 KiB of empty slots), 1.00 KiB by the formula "
            "(+100.0%); the formula counts kept "
            "tokens, while a page holding an evicted token is freed only once no layer and no "
            "KV head keeps a token in it, and a policy evicting during decode takes a new slot "
            "per token until its slots are compacted again (and latent rows padded to whole "
            "32-value blocks count as held)");
  m["kept_tokens"]["fraction"] = 1.0;  // nothing evicted: no reason offered
  m["measured"]["padding"] = 0;
  EXPECT_EQ(nominal_mismatch_warning(m),
            "measured KV bytes differ from the method's formula by more than 1%: 3.00 KiB "
            "held, 1.00 KiB by the formula (+200.0%)");
  m["nominal_mismatch"] = false;
  EXPECT_EQ(nominal_mismatch_warning(m), "");
  EXPECT_EQ(nominal_mismatch_warning(json()), "");
}

// With paged attention the cache occupies whole pages; their empty slots count in the bytes it
// occupied (kv_bytes, measured.total) but not in the format's rates, which stay the format's.
TEST(ThroughputSuite, PagedRatesLeaveOutEmptyPageSlots) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [2], "prompt_tokens": [20],
                            "new_tokens": [3], "warmup": 0, "repeats": 1})"));
  h.spec.attention = "paged";
  for (const char* name : {"full", "int8"}) {
    h.method = resolve_method({{"name", name}}, "methods[0]");
    ThroughputSuite suite;
    CellOutput out = h.run(suite);
    const json& r = out.records[0];
    const json& mem = r["kv_memory"];
    const double padding = mem["measured"]["padding"].get<double>();
    ASSERT_GT(padding, 0) << name;  // 22 tokens in pages of 16 or 32
    EXPECT_DOUBLE_EQ(mem["bits_per_value"].get<double>(), name == std::string("full") ? 16 : 8.5)
        << name;
    EXPECT_DOUBLE_EQ(r["kv_bytes_per_token"].get<double>(), mem["bytes_per_token"].get<double>());
    EXPECT_EQ(r["kv_bytes"].get<double>(), mem["measured"]["total"].get<double>());
    // The two decode steps hold 21 and 22 tokens of each sequence: their median, 21.5, at the
    // per-token rate of what pages hold, their empty slots left out.
    EXPECT_NEAR(r["decode_bytes_per_step"].get<double>(),
                double(h.model.get().decode_step_weight_bytes(2)) +
                    2 * 21.5 * r["kv_bytes_per_token"].get<double>(),
                1.0)
        << name;
    EXPECT_FALSE(mem["nominal_mismatch"].get<bool>()) << name;
  }
}

// Quest holds every token but a step reads the dense layers' tokens, its chosen pages in the
// others and their page bounds: decode_bytes_per_step counts those. tiny-qwen3 (4 layers, 2
// KV heads of 64, bf16 cache: 512 B per token and layer), quest budget 32 (2 pages of 16),
// dense_layers 2, a 64-token prompt: steps hold 65, 66, 67 tokens and read 17, 18, 19 of them
// in layers 2 and 3 (one whole page and the newest page's tokens); the median step (66 tokens,
// 5 pages of bounds: 2 fp16 vectors of 64 per KV head and page, in 2 layers) reads
// 2 x 66 x 512 + 2 x 18 x 512 + 2 x 2560 bytes.
TEST(ThroughputSuite, QuestCountsTheBytesAStepReads) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [64],
                            "new_tokens": [4], "warmup": 0, "repeats": 1})"));
  h.method = resolve_method({{"name", "quest"}, {"budget", 32}}, "methods[0]");
  ThroughputSuite suite;
  CellOutput out = h.run(suite);
  const json& r = out.records.at(0);
  const uint64_t read = 2 * 66 * 512 + 2 * 18 * 512 + 2 * 2560;
  EXPECT_EQ(r["decode_bytes_per_step"], h.model.get().decode_step_weight_bytes(1) + read);
  // What it holds at the last step is more: every token in every layer, and the bounds.
  EXPECT_EQ(r["kv_bytes"], 4 * 67 * 512 + 2 * 2 * 64 * 2 * 2 * 5);
}

TEST(ThroughputSuite, QuantizedCacheReportsItsRealSize) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [2], "prompt_tokens": [20],
                            "new_tokens": [3], "warmup": 0, "repeats": 1})"));
  h.method = resolve_method({{"name", "int8"}}, "methods[0]");
  ThroughputSuite suite;
  CellOutput out = h.run(suite);
  const json& mem = out.records[0]["kv_memory"];
  EXPECT_EQ(mem["tokens"], 2 * 22);
  // q8_0 at group 32 over head_dim 64: 8 bits + 16 bits of scale per 32 values = 8.5 bits.
  EXPECT_DOUBLE_EQ(mem["bits_per_value"].get<double>(), 8.5);
  EXPECT_DOUBLE_EQ(mem["ratio_to_fp16"].get<double>(), 8.5 / 16);
  EXPECT_FALSE(mem["nominal_mismatch"].get<bool>());
}

// The time a retention policy's work takes is reported beside the step times: zero for the
// full cache, positive and a share of at most 1 for a policy that scores every step.
TEST(ModelSuites, RetentionTimeIsReportedPerCell) {
  Harness lat(json::parse(R"({"name": "latency", "prompt_tokens": 24, "new_tokens": 6,
                              "warmup": 0, "repeats": 2})"));
  LatencySuite latency;
  const json full = lat.run(latency).summary["retention"];
  EXPECT_EQ(full, json({{"prefill_ms", 0.0},
                        {"decode_step_ms", 0.0},
                        {"prefill_share", 0.0},
                        {"decode_share", 0.0}}));
  lat.method = resolve_method({{"name", "h2o"}, {"heavy", 8}, {"recent", 8}}, "methods[0]");
  const json h2o = lat.run(latency).summary["retention"];
  EXPECT_GT(h2o["prefill_ms"].get<double>(), 0.0);
  EXPECT_GT(h2o["decode_step_ms"].get<double>(), 0.0);
  for (const char* k : {"prefill_share", "decode_share"}) {
    EXPECT_GT(h2o[k].get<double>(), 0.0) << k;
    EXPECT_LE(h2o[k].get<double>(), 1.0) << k;
  }
  Harness thr(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [24],
                              "new_tokens": [4], "warmup": 0, "repeats": 1})"));
  thr.method =
      resolve_method({{"name", "scissorhands"}, {"budget", 12}, {"recent", 4}}, "methods[0]");
  ThroughputSuite throughput;
  CellOutput out = thr.run(throughput);
  const json& r = out.records[0]["retention"];
  EXPECT_GT(r["decode_step_ms"].get<double>(), 0.0);
  EXPECT_LE(r["decode_share"].get<double>(), 1.0);
  EXPECT_EQ(out.records[0]["kv_memory"]["kept_tokens"]["max"], 12);
  const Table table = throughput.summary_table(out);
  ASSERT_EQ(table.columns.size(), 10u);
  EXPECT_EQ(table.columns[6], "attend %");
  EXPECT_EQ(table.rows[0][6], "-");  // no warmup generation to split
}

TEST(ModelSuites, EstimatesCoverKvAndWeights) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [2], "prompt_tokens": [100],
                            "new_tokens": [28]})"));
  const ModelConfig* config = h.model.config_only();
  ASSERT_NE(config, nullptr);
  const double per_token = method_kv_bytes_per_token(h.method, *config, at::kBFloat16);
  EXPECT_DOUBLE_EQ(per_token, double(config->kv_bytes_per_token(2)));
  EstimateContext ctx{h.spec.suites[0].params, h.method, config, per_token, h.env};
  const uint64_t est = ThroughputSuite().estimate_bytes(ctx);
  const uint64_t kv = 2ull * 128 * config->kv_bytes_per_token(2);
  EXPECT_GE(est, kv + model_weight_bytes(*config));
  EXPECT_LT(est, 10 * (kv + model_weight_bytes(*config)));
  EXPECT_EQ(model_weight_bytes(*config), h.model.get().weight_bytes());
}

// The capacity view's estimate takes the batch the run takes: none when not one sequence of
// capacity_context tokens fits the budget (the run then measures nothing there), so --dry-run
// does not refuse a plan the run carries out.
TEST(ModelSuites, TheCapacityEstimateTakesTheRunsBatch) {
  Harness h(json::parse(R"({"name": "throughput", "batch": [1], "prompt_tokens": [16],
                            "new_tokens": [2], "capacity_context": 16777216,
                            "kv_budget_bytes": 1000000, "max_batch": 64})"));
  const ModelConfig* config = h.model.config_only();
  ASSERT_NE(config, nullptr);
  const double per_token = method_kv_bytes_per_token(h.method, *config, at::kBFloat16);
  EstimateContext ctx{h.spec.suites[0].params, h.method, config, per_token, h.env};
  ctx.kv_dtype = at::kBFloat16;  // per_token's
  const uint64_t none_fits = ThroughputSuite().estimate_bytes(ctx);
  EXPECT_LT(none_fits, 100 * model_weight_bytes(*config));  // not 64 sequences of 16M tokens
  json fits = h.spec.suites[0].params;
  fits["capacity_context"] = 64;
  fits["kv_budget_bytes"] = 1000000000;
  EstimateContext ctx2{fits, h.method, config, per_token, h.env};
  ctx2.kv_dtype = at::kBFloat16;
  const uint64_t some = ThroughputSuite().estimate_bytes(ctx2);
  EXPECT_GE(some, model_weight_bytes(*config) + uint64_t(64 * 64 * per_token));  // 64 sequences
}

// On the paged cache a short sequence stores more per token than the formula's one-token bound
// (KIVI's fp16 rings of `residual` rows are whole from its first token, and its pages whole):
// the dry-run estimate counts what the pages store at the cell's context.
TEST(ModelSuites, PagedEstimatesCountWhatThePagesStoreAtTheContext) {
  Harness h(json::parse(R"({"name": "latency", "prompt_tokens": 8, "new_tokens": 2,
                            "batch": 4})"));
  h.method = resolve_method({{"name", "kivi-4"}}, "methods[0]");
  const ModelConfig* config = h.model.config_only();
  ASSERT_NE(config, nullptr);
  const at::ScalarType dtype = h.model.kv_dtype();
  const double per_token = method_kv_bytes_per_token(h.method, *config, dtype);
  auto estimate = [&](bool paged) {
    EstimateContext ctx{h.spec.suites[0].params, h.method, config, per_token, h.env};
    ctx.kv_dtype = dtype, ctx.paged = paged;
    return LatencySuite().estimate_bytes(ctx);
  };
  // 4 sequences of 10 tokens as the pages store them, against the bound's 40 tokens.
  const uint64_t stored = 4 * paged_sequence_bytes_of(h.method, dtype, config->head_dim).of(10) *
                          uint64_t(config->num_kv_heads * config->num_layers);
  const uint64_t bound = static_cast<uint64_t>(40 * per_token);
  ASSERT_GT(stored, 4 * bound);
  EXPECT_GE(estimate(true) + 1, estimate(false) + (stored - bound));
}

TEST(ModelSuites, MethodsThatCannotRunOnTheModelAreRefusedInThePlan) {
  // tiny-mistral has head_dim 16: an int8 group of 32 cannot divide it.
  json cfg = {{"suites", {{{"name", "latency"}}}},
              {"methods", {{{"name", "int8"}}}},
              {"model", {{"preset", "tiny-mistral"}, {"random_init", true}}}};
  RunSpec spec = parse_run_spec(cfg, "t");
  ModelProvider model(spec.model);
  Environment env;
  try {
    estimate_cells(expand_cells(spec), model, env);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group 32 does not divide head_dim 16"), std::string::npos)
        << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("plan: cell latency.int8.", 0), 0u);
  }
  cfg["methods"][0]["group"] = 16;
  RunSpec ok = parse_run_spec(cfg, "t");
  EXPECT_NO_THROW(estimate_cells(expand_cells(ok), model, env));
}

// A calibrating codec's capture (every prompt's fp32 keys and values of every layer, twice) is
// planned beside the weights: 1,024 prompts of 4,096 tokens on Llama-3-8B's shapes need 2 TiB
// of it, which the plan refuses before anything loads (it ran out of memory in the capture).
TEST(ModelSuites, ACalibrationCaptureIsPlanned) {
  const ModelConfig c = parse_model_config(find_model_preset("llama-3-8b").config, "preset");
  // 2 (K, V) x 4 x 512 tokens x 32 layers x 8 heads x 128 x 4 B, twice: 1 GiB.
  EXPECT_EQ(calibration_capture_bytes({4, 512, 0, "text"}, c), uint64_t{1} << 30);
  EXPECT_EQ(calibration_capture_bytes({0, 512, 0, "text"}, c), 0u);
  auto estimate = [](int64_t prompts) {
    json cfg = {
        {"suites", {{{"name", "latency"}}}},
        {"methods", {{{"name", "kvproj"}, {"calib_prompts", prompts}, {"calib_tokens", 4096}}}},
        {"model", {{"preset", "llama-3-8b"}, {"random_init", true}}}};
    RunSpec spec = parse_run_spec(cfg, "t");
    ModelProvider model(spec.model);
    return estimate_cells(expand_cells(spec), model, Environment{}).at(0);
  };
  EXPECT_GE(estimate(1024), uint64_t{2} << 40);
  EXPECT_LT(estimate(1), uint64_t{1} << 40);
}

TEST(ModelSuites, OversizedPlanIsRefused) {
  std::vector<Cell> cells(1);
  cells[0].id = "throughput.full.x", cells[0].suite = "throughput";
  EXPECT_NO_THROW(refuse_oversized_plan(cells, {100}, 1000));
  try {
    refuse_oversized_plan(cells, {900}, 1000);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("plan: cell throughput.full.x needs about 900 B"),
              std::string::npos);
    // A model's cell: its weights' dtype is named as the other lever.
    EXPECT_NE(std::string(e.what()).find("model.compute_dtype"), std::string::npos) << e.what();
  }
  cells[0].id = "kernels.full.x", cells[0].suite = "kernels";  // no model: no such hint
  try {
    refuse_oversized_plan(cells, {900}, 1000);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("model.compute_dtype"), std::string::npos) << e.what();
  }
}

// model.dtype "auto": the checkpoint's dtype, except on a GPU computing in 16 bits, where the
// cache stores what the model computes (no fp32 round trip per layer).
TEST(ModelProvider, AutoKvDtypeFollowsTheComputeDtypeOnAGpu) {
  ModelSpec spec;
  spec.preset = "tiny-llama", spec.random_init = true, spec.dtype = "auto";
  EXPECT_EQ(ModelProvider(spec).kv_dtype(), at::kBFloat16);  // the preset's torch_dtype
  spec.device = "cuda", spec.compute_dtype = "float16";
  EXPECT_EQ(ModelProvider(spec).kv_dtype(), at::kHalf);  // no weights loaded to say so
  spec.compute_dtype = "float32";
  EXPECT_EQ(ModelProvider(spec).kv_dtype(), at::kBFloat16);
  spec.dtype = "bfloat16", spec.compute_dtype = "float16";
  EXPECT_EQ(ModelProvider(spec).kv_dtype(), at::kBFloat16);  // as configured
}

TEST(ModelProvider, ReportsRandomWeightsAndFailsOnceWithTheSameError) {
  ModelSpec none;
  ModelProvider empty(none);
  EXPECT_EQ(empty.config_only(), nullptr);
  EXPECT_THROW(empty.get(), Error);
  ModelSpec missing;
  missing.path = "/nonexistent/model";
  missing.dtype = "auto";
  ModelProvider bad(missing);
  std::string first, second;
  try {
    bad.get();
  } catch (const Error& e) {
    first = e.what();
  }
  try {
    bad.get();
  } catch (const Error& e) {
    second = e.what();
  }
  EXPECT_EQ(first, "model: /nonexistent/model: no such directory");
  EXPECT_EQ(first, second);
  ModelSpec a_file = missing;
  a_file.path = (std::filesystem::temp_directory_path() / "kvbench_provider_file").string();
  std::ofstream(a_file.path) << "x";
  try {
    ModelProvider(a_file).get();
    FAIL() << "a file is not a checkpoint";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "model: " + a_file.path + ": not a directory (a checkpoint is a directory)");
  }
  std::filesystem::remove(a_file.path);

  auto dir = std::filesystem::temp_directory_path() / "kvbench_provider_model";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);  // made ahead and empty: written there as if absent
  ModelSpec written;
  written.path = dir.string();
  written.preset = "tiny-mistral";
  written.dtype = "float32";
  ModelProvider p(written);
  p.get();  // writes the checkpoint on first use, then loads it
  EXPECT_TRUE(std::filesystem::exists(dir / "model.safetensors"));
  EXPECT_EQ(p.identity()["random_weights"], true);
  EXPECT_EQ(p.identity()["kv_dtype"], "float32");
  EXPECT_EQ(p.identity()["config"]["architecture"], "MistralForCausalLM");
  // The same directory asked for with another seed is refused, not silently reused.
  ModelSpec other = written;
  other.seed = 8;
  ModelProvider mismatched(other);
  try {
    mismatched.get();
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds preset tiny-mistral seed 0 but the config asks "
                                         "for tiny-mistral seed 8"),
              std::string::npos)
        << e.what();
  }
  // A checkpoint kvbench train wrote (marked without a preset) is named as one.
  {
    auto trained = std::filesystem::temp_directory_path() / "kvbench_provider_trained";
    std::filesystem::create_directories(trained);
    std::ofstream(trained / "config.json")
        << R"({"kvbench": {"random_weights": false, "seed": 1}})";
    ModelSpec asks = written;
    asks.path = trained.string();
    try {
      ModelProvider(asks).config_only();
      ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("holds a checkpoint trained by kvbench train, but the "
                                           "config asks for preset tiny-mistral"),
                std::string::npos)
          << e.what();
    }
    std::filesystem::remove_all(trained);
  }
  // A mark of the wrong type names its key and file, not a json library error.
  {
    auto odd = std::filesystem::temp_directory_path() / "kvbench_provider_odd_mark";
    std::filesystem::create_directories(odd);
    std::ofstream(odd / "config.json") << R"({"kvbench": {"preset": 5, "seed": 0}})";
    ModelSpec asks = written;
    asks.path = odd.string();
    try {
      ModelProvider(asks).config_only();
      ADD_FAILURE() << "expected an Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("config.json: kvbench.preset must be a string, got 5"),
                std::string::npos)
          << e.what();
    }
    std::filesystem::remove_all(odd);
  }
  // A checkpoint kvbench did not write (no mark) is not the preset either: loading it under
  // the preset's name would mislabel the report.
  {
    auto foreign = std::filesystem::temp_directory_path() / "kvbench_provider_foreign";
    std::filesystem::create_directories(foreign);
    std::ofstream(foreign / "config.json") << R"({"architectures": ["LlamaForCausalLM"]})";
    ModelSpec asks = written;
    asks.path = foreign.string();
    try {
      ModelProvider(asks).config_only();
      ADD_FAILURE() << "expected a ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("holds a checkpoint kvbench did not write"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("set model.preset to \"\""), std::string::npos);
    }
    std::filesystem::remove_all(foreign);
  }
  // The seed the weights came from: the checkpoint's own, loaded by path alone.
  {
    ModelSpec by_path;
    by_path.path = dir.string();
    by_path.dtype = "float32";
    by_path.seed = 123;  // the config's, not the weights'
    ModelProvider loaded(by_path);
    loaded.get();
    EXPECT_EQ(loaded.identity()["seed"], 0);
  }
  // The config alone (what validate and --dry-run read) says so too, as the config's mistake.
  ModelProvider config_only(other);
  try {
    config_only.config_only();
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key_path(), "model.path");
    EXPECT_NE(std::string(e.what()).find("config: model.path: " + dir.string() +
                                         " holds preset tiny-mistral seed 0"),
              std::string::npos)
        << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(ModelSuites, CudaNeedsThePagedCache) {
  Harness h(json::parse(R"({"name": "latency", "repeats": 1})"));
  h.spec.device = "cuda";
  LatencySuite suite;
  try {
    h.run(suite);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "latency: device 'cuda' needs attention 'paged' (on a GPU the KV cache is paged "
              "and attention runs in the paged kernels)");
  }
}

TEST(ModelSuites, KernelsCellIdsIgnoreTheModel) {
  json cfg = {{"suites", {{{"name", "kernels"}}, {{"name", "latency"}}}},
              {"threads", 1},
              {"model", {{"preset", "tiny-llama"}, {"random_init", true}, {"seed", 1}}}};
  auto a = expand_cells(parse_run_spec(cfg, "t"));
  cfg["model"] = {{"preset", "tiny-llama"}, {"random_init", true}};
  auto b = expand_cells(parse_run_spec(cfg, "t"));
  EXPECT_EQ(a[0].id, b[0].id);
  EXPECT_NE(a[1].id, b[1].id);
}

TEST(ThroughputSuite, AWideDecodeSpreadIsNamed) {
  json r = {{"batch", 4}, {"prompt_tokens", 256}, {"new_tokens", 32}};
  r["decode_step_s"] = {{"min", 0.0006}, {"median", 0.0007}, {"p90", 0.0009}, {"max", 0.001}};
  EXPECT_EQ(decode_spread_warning(r), "");
  r["decode_step_s"] = {{"min", 0.0006}, {"median", 0.0007}, {"p90", 0.03}, {"max", 0.048}};
  EXPECT_EQ(decode_spread_warning(r),
            "batch 4, prompt 256, new 32: decode steps spread from 0.60 to 48.00 ms (p90 42.9x the "
            "median): the machine was busy or the step is bimodal; the median may mislead");
}

// A CPU budget from kv_budget_fraction is read once per run: memory taken between two cells
// does not shrink the later one's budget (estimates read afresh).
TEST(Workload, TheCpuBudgetBaseIsReadOncePerRun) {
  const uint64_t first = kv_budget_base_bytes(at::kCPU, 0, /*once_per_run=*/true);
  ASSERT_GT(first, 0u);
  std::vector<char> taken(size_t{256} << 20, 1);  // 256 MiB, touched
  EXPECT_EQ(kv_budget_base_bytes(at::kCPU, 0, true), first);
  EXPECT_GT(kv_budget_base_bytes(at::kCPU, 0, false), 0u);
  EXPECT_EQ(taken[taken.size() / 2], 1);
}

// The generation estimate: its terms by hand on a small model; at the config caps and the
// suites' largest batch and context (2^67 bytes of KV alone) it is clamped at 2^60, never wrapped
// to a small number, and never lower than a smaller request's.
TEST(Workload, TheGenerationEstimateNeverWraps) {
  ModelConfig c;
  c.vocab_size = 512, c.hidden_size = 128, c.intermediate_size = 352, c.num_layers = 4;
  c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 32;
  const uint64_t b = 3, p = 100, n = 20, per_token = c.kv_bytes_per_token(4);
  const uint64_t width = 6 * 128 + 4 * 352 + 4 * 4 * 32;
  EXPECT_EQ(generation_bytes(c, double(per_token), 3, 100, 20),
            b * (p + n) * per_token + b * p * width * 4 + b * 512 * 4 + 3 * 4 * p * p * 4 +
                2 * 2 * (p + n) * 32 * 4);
  // A prefill one sequence at a time holds one prompt's activations, and every sequence's logits.
  EXPECT_EQ(generation_bytes(c, double(per_token), 3, 100, 20, at::kFloat, 1),
            b * (p + n) * per_token + p * width * 4 + b * 512 * 4 + 3 * 4 * p * p * 4 +
                2 * 2 * (p + n) * 32 * 4);
  EXPECT_EQ(generation_bytes(c, double(per_token), 3, 100, 20, at::kFloat, 8),
            generation_bytes(c, double(per_token), 3, 100, 20));
  c.vocab_size = int64_t{1} << 24, c.hidden_size = int64_t{1} << 17;
  c.intermediate_size = int64_t{1} << 20, c.num_layers = 4096;
  c.num_heads = c.num_kv_heads = c.head_dim = 1024;
  const double big = double(c.kv_bytes_per_token(4));
  EXPECT_EQ(generation_bytes(c, big, 4096, 1 << 20, 1 << 16), uint64_t{1} << 60);
  EXPECT_LE(generation_bytes(c, big, 1, 1024, 1), generation_bytes(c, big, 4096, 1 << 20, 1));
  EXPECT_GT(generation_bytes(c, big, 1, 1024, 1), uint64_t{1} << 40);
}

// A retention method that kept every token at the peak measured its codec alone; Quest (which
// evicts nothing by design), methods without a policy and cells that evicted say nothing.
TEST(Workload, ARetentionMethodThatEvictedNothingIsNamed) {
  json kept_all = {{"tokens", 80}, {"kept_tokens", {{"fraction", 1.0}}}};
  json evicted = {{"tokens", 80}, {"kept_tokens", {{"fraction", 0.4}}}};
  const json snapkv = resolve_method({{"name", "snapkv"}, {"budget", 4096}}, "m");
  EXPECT_EQ(nothing_evicted_warning(snapkv, kept_all),
            "retention policy 'snapkv' evicted nothing: every layer kept every token at the "
            "peak (its budget covers these prompts), so this cell measures its codec alone; use "
            "prompts longer than the budget to measure eviction");
  EXPECT_EQ(nothing_evicted_warning(snapkv, evicted), "");
  EXPECT_EQ(nothing_evicted_warning(resolve_method({{"name", "quest"}}, "m"), kept_all), "");
  EXPECT_EQ(nothing_evicted_warning(resolve_method({{"name", "int4"}}, "m"), kept_all), "");
  EXPECT_EQ(nothing_evicted_warning(snapkv, json()), "");
}

// Empty page slots above 5% of the measured bytes are named in the memory note (a short prompt's
// whole pages can make a paged format read above 1x fp16).
TEST(Workload, TheMemoryNoteNamesEmptyPageSlots) {
  json m = {{"tokens", 40},
            {"bits_per_value", 14.4},
            {"ratio_to_fp16", 0.9},
            {"measured", {{"total", 65536}, {"padding", 16384}}}};
  EXPECT_EQ(kv_memory_note(m),
            "KV cache at peak: 64.00 KiB for 40 tokens (14.40 bits/value, 0.90x fp16, of which "
            "16.00 KiB empty slots, not in the bits/value)");
  m["measured"]["padding"] = 1024;
  EXPECT_EQ(kv_memory_note(m),
            "KV cache at peak: 64.00 KiB for 40 tokens (14.40 bits/value, "
            "0.90x fp16)");
  // Storage occupying over 10% more than it holds (free pool pages, spare rows) is named too.
  m["allocated_bytes"] = 131072;
  EXPECT_EQ(kv_memory_note(m),
            "KV cache at peak: 64.00 KiB for 40 tokens (14.40 bits/value, 0.90x fp16; its "
            "storage occupied 128.00 KiB with free pool pages and spare rows)");
  m["allocated_bytes"] = 70000;
  EXPECT_EQ(kv_memory_note(m),
            "KV cache at peak: 64.00 KiB for 40 tokens (14.40 bits/value, "
            "0.90x fp16)");
}

TEST(FidelitySuite, StepMetricsMatchHandComputedValues) {
  // p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 0.1438410362.
  const at::Tensor full = at::tensor({0.0, 0.0}, at::kDouble);
  const at::Tensor method = at::tensor({std::log(3.0), 0.0}, at::kDouble);
  StepFidelity s = step_fidelity(full, method, 1);
  EXPECT_NEAR(s.kl, 0.5 * std::log(2.0 / 3.0) + 0.5 * std::log(2.0), 1e-12);
  EXPECT_NEAR(s.kl, 0.1438410362, 1e-9);
  EXPECT_TRUE(s.top1_agree);
  EXPECT_NEAR(s.nll_full, std::log(2.0), 1e-12);
  EXPECT_NEAR(s.nll_method, std::log(4.0), 1e-12);
  // A token the full model gives probability 0 adds nothing (no NaN from 0 * inf).
  const at::Tensor hard = at::tensor({0.0, -INFINITY}, at::kDouble);
  EXPECT_NEAR(step_fidelity(hard, method, 0).kl, std::log(4.0 / 3.0), 1e-12);
  EXPECT_FALSE(step_fidelity(at::tensor({0.0, 1.0}, at::kDouble), method, 0).top1_agree);
  // The full cache's top two tied: the method choosing either agrees.
  const at::Tensor tied = at::tensor({12.5, 3.0, 12.5}, at::kDouble);
  EXPECT_TRUE(step_fidelity(tied, at::tensor({1.0, 0.0, 1.0 + 1e-12}, at::kDouble), 0).top1_agree);
  EXPECT_TRUE(step_fidelity(tied, at::tensor({1.0, 0.0, 0.5}, at::kDouble), 0).top1_agree);
  EXPECT_FALSE(step_fidelity(tied, at::tensor({0.0, 1.0, 0.5}, at::kDouble), 0).top1_agree);
  // NaN logits give a NaN divergence, never a clamped 0 that reads as lossless.
  EXPECT_TRUE(std::isnan(step_fidelity(full, at::tensor({NAN, 0.0}, at::kDouble), 0).kl));
}

// Runs one cell of suite S with `method` on the harness's tiny model.
template <class S>
CellOutput run_cell(const json& method, const std::string& params) {
  Harness h(json::parse(params));
  h.method = resolve_method(method, "methods[0]");
  S suite;
  return h.run(suite);
}

CellOutput run_fidelity(const json& method, const std::string& params) {
  return run_cell<FidelitySuite>(method, params);
}

TEST(FidelitySuite, TheFullCacheAgainstItselfIsExact) {
  CellOutput out = run_fidelity({{"name", "full"}}, R"({"name": "fidelity", "windows": 2,
                                 "prefix_tokens": 24, "eval_tokens": 6})");
  ASSERT_EQ(out.records.size(), 2u);
  for (const auto& r : out.records) {
    ASSERT_EQ(r["kl"].size(), 6u);
    for (double k : r["kl"]) EXPECT_EQ(k, 0.0);
    EXPECT_EQ(r["nll_full"], r["nll_method"]);
  }
  EXPECT_EQ(out.summary["positions"], 12);
  EXPECT_EQ(out.summary["top1_agreement"], 1.0);
  EXPECT_EQ(out.summary["ppl_ratio"], 1.0);
  EXPECT_EQ(out.summary["corpus"], "synthetic token ids");
  EXPECT_TRUE(out.warnings.empty());  // the full cache is expected to be exact
}

// Each step's NLL is of the token after the one fed: recomputed here by a fresh prefill of the
// window's first prefix + i + 1 tokens, scored at token prefix + i + 1. With a text corpus
// every window starts with the tokenizer's BOS (its first token gives way), as llama.cpp's
// perplexity and KL-divergence chunks do.
TEST(FidelitySuite, EachStepScoresTheNextToken) {
  const std::string text =
      "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.";
  for (const bool from_text : {false, true}) {
    json suite = json::parse(R"({"name": "fidelity", "windows": 2, "prefix_tokens": 12,
                                 "eval_tokens": 5})");
    if (from_text) suite["text"] = text;
    Harness h(suite);
    FidelitySuite fidelity;
    const CellOutput out = h.run(fidelity);
    const Transformer& model = h.model.get();
    const ModelConfig& c = model.config();
    const int64_t span = 12 + 5 + 1;
    std::vector<int64_t> corpus;
    std::optional<int64_t> bos;
    if (from_text) {
      for (int32_t id : h.model.tokenizer().encode(text, true)) corpus.push_back(id);
      bos = h.model.tokenizer().bos_id();
      ASSERT_TRUE(bos.has_value());
      ASSERT_EQ(corpus.front(), *bos);  // the tokenizer adds it: the case under test
    } else {
      corpus = synthetic_prompts(1, 2 * span, c.vocab_size, h.spec.seed).front();
    }
    double shifted = 0;  // how far the previous token's NLL is: the test must tell them apart
    for (int64_t w = 0; w < 2; ++w) {
      const json& nll = out.records.at(size_t(w))["nll_full"];
      std::vector<int64_t> window(corpus.begin() + w * span, corpus.begin() + (w + 1) * span);
      if (bos) window.front() = *bos;
      for (int64_t i = 0; i < 5; ++i) {
        const auto cache = make_kv_cache(resolve_method({{"name", "full"}}, "m"), c.num_layers,
                                         c.num_kv_heads, c.head_dim, h.model.kv_dtype());
        const int64_t seq = cache->add_sequence();
        const at::Tensor logits = model.forward(
            {{seq, std::vector<int64_t>(window.begin(), window.begin() + 12 + i + 1)}}, *cache);
        const at::Tensor lp = at::log_softmax(logits.to(at::kDouble).flatten(), 0);
        const double got = nll[size_t(i)].get<double>();
        EXPECT_NEAR(got, -lp[window[12 + i + 1]].item<double>(), 1e-4)
            << (from_text ? "text" : "ids") << ", window " << w << ", step " << i;
        shifted = std::max(shifted, std::abs(got + lp[window[12 + i]].item<double>()));
      }
    }
    EXPECT_GT(shifted, 1e-2);
  }
}

TEST(FidelitySuite, KiviWithAWindowLongerThanTheTextIsExact) {
  // methods.md: R >= T gives the full cache; 64 > 24 + 6 tokens.
  CellOutput out = run_fidelity({{"name", "kivi-2"}, {"group", 16}, {"residual", 64}},
                                R"({"name": "fidelity", "windows": 1, "prefix_tokens": 24,
                                    "eval_tokens": 6})");
  EXPECT_EQ(out.summary["kl_max"], 0.0);
  EXPECT_EQ(out.summary["top1_agreement"], 1.0);
  // A compression method that compressed nothing must not read as lossless unremarked.
  ASSERT_EQ(out.warnings.size(), 1u);
  EXPECT_NE(out.warnings[0].find("raise prefix_tokens"), std::string::npos) << out.warnings[0];
}

TEST(FidelitySuite, QuantizationMovesTheDistributionsMeasurably) {
  CellOutput out = run_fidelity({{"name", "kivi-2"}, {"group", 16}, {"residual", 16}},
                                R"({"name": "fidelity", "windows": 2, "prefix_tokens": 40,
                                    "eval_tokens": 8})");
  const double mean = out.summary["kl_mean"], p99 = out.summary["kl_p99"],
               mx = out.summary["kl_max"];
  EXPECT_GT(mean, 0.0);
  EXPECT_LE(p99, mx);
  EXPECT_GE(mx, mean);
  // The agreement is the share of steps whose method argmax is a full-cache argmax: some
  // steps disagree (2-bit keys on a random model's flat distributions), and a disagreeing step
  // has moved the distribution (KL > 0).
  double agree = 0, steps = 0;
  for (const auto& r : out.records) {
    ASSERT_EQ(r["top1_agree"].size(), r["kl"].size());
    for (size_t i = 0; i < r["kl"].size(); ++i) {
      agree += r["top1_agree"][i].get<int>(), ++steps;
      if (r["top1_agree"][i] == 0) EXPECT_GT(r["kl"][i].get<double>(), 0.0) << i;
    }
  }
  EXPECT_EQ(steps, 16);
  EXPECT_DOUBLE_EQ(out.summary["top1_agreement"].get<double>(), agree / steps);
  EXPECT_LT(agree, steps);
  EXPECT_GT(agree, 0);
  EXPECT_GT(out.summary["ppl_method"].get<double>(), 1.0);
  EXPECT_TRUE(out.warnings.empty());
  // Every method of a run scores the same corpus: the baseline's perplexity is the same.
  CellOutput full = run_fidelity({{"name", "full"}}, R"({"name": "fidelity", "windows": 2,
                                  "prefix_tokens": 40, "eval_tokens": 8})");
  EXPECT_EQ(out.summary["ppl_full"], full.summary["ppl_full"]);
}

TEST(FidelitySuite, ACorpusTooShortForTheWindowsIsAClearError) {
  try {
    run_fidelity({{"name", "full"}}, R"({"name": "fidelity", "text": "a short text",
                                        "windows": 2, "prefix_tokens": 64, "eval_tokens": 8})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("corpus has"), std::string::npos) << e.what();
  }
}

TEST(FidelitySuite, AnEmptyTextFileIsAnErrorNotRandomTokens) {
  const std::string path = ::testing::TempDir() + "/kvbench_empty_corpus.txt";
  std::ofstream(path).close();
  try {
    run_fidelity({{"name", "full"}}, R"({"name": "fidelity", "text_file": ")" + path + R"("})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("text_file '" + path + "' is empty"), std::string::npos)
        << e.what();
  }
}

TEST(FidelitySuite, ATextFileThatIsNotUtf8IsNamed) {
  const std::string path = ::testing::TempDir() + "/kvbench_binary_corpus.txt";
  std::ofstream(path, std::ios::binary) << std::string("text \xff\xfe then more");
  try {
    run_fidelity({{"name", "full"}}, R"({"name": "fidelity", "text_file": ")" + path + R"("})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("text_file '" + path + "' is not UTF-8 text"),
              std::string::npos)
        << e.what();
  }
}

TEST(OutputLengthSuite, LengthShiftByHand) {
  // D = (10-20)/10 = -100%, (20-20)/20 = 0, (40-10)/40 = 75%.
  LengthShift s = length_shift({10, 20, 40}, {20, 20, 10});
  EXPECT_NEAR(s.d_mean, (-100.0 + 0.0 + 75.0) / 3, 1e-12);
  EXPECT_NEAR(s.d_median, 0.0, 1e-12);
  EXPECT_NEAR(s.share_longer_50, 1.0 / 3, 1e-12);
  EXPECT_NEAR(s.share_shorter_50, 1.0 / 3, 1e-12);
  EXPECT_NEAR(s.mean_baseline, 70.0 / 3, 1e-12);
  EXPECT_NEAR(s.mean_other, 50.0 / 3, 1e-12);
  // CDFs: base {10,20,40}, other {10,20,20}: differ by 1/3 on [20, 40): W1 = 20/3, D = 1/3.
  EXPECT_NEAR(s.wasserstein, 20.0 / 3, 1e-12);
  EXPECT_NEAR(s.ks_statistic, 1.0 / 3, 1e-12);
  // Paired: differences +10, 0, -30; two pairs differ, ranks 1 and 2, W+ = 1, W- = 2, exact
  // p = 2 P[W+ <= 1] = 2 * 2/4 = 1.
  EXPECT_EQ(s.pairs_differing, 2);
  EXPECT_EQ(s.wilcoxon_statistic, 1.0);
  EXPECT_EQ(s.wilcoxon_p_value, 1.0);
  // Every resample's statistic lies within the extremes of the pairs drawn alone.
  EXPECT_GE(s.d_mean_ci95.low, -100.0);
  EXPECT_LE(s.d_mean_ci95.high, 75.0);
  EXPECT_LT(s.d_mean_ci95.low, s.d_mean);
  EXPECT_GT(s.d_mean_ci95.high, s.d_mean);
  EXPECT_GE(s.length_ratio_ci95.low, 10.0 / 40);
  EXPECT_LE(s.length_ratio_ci95.high, 20.0 / 10);
  EXPECT_LT(s.length_ratio_ci95.low, 50.0 / 70);
  EXPECT_GT(s.length_ratio_ci95.high, 50.0 / 70);
  // Ten pairs all 20% shorter: the intervals collapse and the test sees a shift that the
  // unpaired KS test, on overlapping distributions, does not.
  std::vector<double> base, other;
  for (int i = 1; i <= 10; ++i) {
    base.push_back(10.0 * i);
    other.push_back(8.0 * i);
  }
  s = length_shift(base, other);
  EXPECT_NEAR(s.d_mean_ci95.low, 20.0, 1e-9);
  EXPECT_NEAR(s.d_mean_ci95.high, 20.0, 1e-9);
  EXPECT_NEAR(s.length_ratio_ci95.low, 0.8, 1e-12);
  EXPECT_NEAR(s.length_ratio_ci95.high, 0.8, 1e-12);
  EXPECT_NEAR(s.wilcoxon_p_value, 2.0 / 1024, 1e-15);  // all ten signs alike
  EXPECT_GT(s.ks_p_value, 0.5);
  EXPECT_THROW(length_shift({1, 2}, {1}), Error);
}

CellOutput run_output_length(const json& method, const std::string& params) {
  return run_cell<OutputLengthSuite>(method, params);
}

TEST(OutputLengthSuite, TheFullCacheAgainstItselfHasNoShift) {
  CellOutput out = run_output_length({{"name", "full"}}, R"({"name": "output_length", "samples": 4,
                                      "prompt_tokens": 12, "max_new_tokens": 20})");
  ASSERT_EQ(out.records.size(), 4u);
  for (const auto& r : out.records) {
    EXPECT_EQ(r["length"], r["length_full"]);
    EXPECT_EQ(r["d"], 0.0);
    EXPECT_GE(r["length"].get<double>(), 1.0);
    EXPECT_LE(r["length"].get<double>(), 20.0);
    EXPECT_EQ(r["lengths_control"].size(), 2u);
    EXPECT_EQ(r["lengths_seed_control"].size(), 1u);
    EXPECT_GT(r["kv_bytes"].get<uint64_t>(), 0u);
    EXPECT_EQ(r["prompt_hash"].get<std::string>().size(), 16u);
    EXPECT_TRUE(r["stop"] == "eos" || r["stop"] == "length");
    EXPECT_EQ(r["stop"] == "length", r["length"] == 20.0);
  }
  EXPECT_EQ(out.summary["d_mean"], 0.0);
  EXPECT_EQ(out.summary["ks_statistic"], 0.0);
  EXPECT_EQ(out.summary["wasserstein"], 0.0);
  EXPECT_EQ(out.summary["pairs_differing"], 0);
  EXPECT_EQ(out.summary["wilcoxon_p_value"], 1.0);
  EXPECT_EQ(out.summary["d_mean_ci95"], json::array({0.0, 0.0}));
  EXPECT_EQ(out.summary["length_ratio_ci95"], json::array({1.0, 1.0}));
  EXPECT_EQ(out.summary["controls"].size(), 2u);
  EXPECT_EQ(out.summary["seed_controls"].size(), 1u);
  // The printed table: the full cache, the method and each control, every row complete.
  const Table t = OutputLengthSuite().summary_table(out);
  ASSERT_EQ(t.rows.size(), 5u);
  EXPECT_EQ(t.rows[4][0], "full, seed +1");
  for (const auto& row : t.rows) EXPECT_EQ(row.size(), t.columns.size());
  EXPECT_EQ(t.columns[3], "length ratio [95% CI]");
  EXPECT_EQ(t.rows[1][3], "1.00 [1.00, 1.00]");
  EXPECT_EQ(t.rows[1][7], "1.000");  // paired p
  EXPECT_EQ(out.summary["controls"][0]["temperature"], 0.9);
  EXPECT_FALSE(out.warnings.empty());  // 4 samples are too few, and says so
}

// A control at the run's own temperature would repeat the full-cache run: skipped, said. The
// timings split: per-sample full-cache TTFT and TPOT, tpot_ratio over the pairs that made more
// than one token, and an interval for e2e_ratio. Control temperatures equal at 2 decimals are
// a config error; one sample gives no interval (null), not a zero-width one.
TEST(OutputLengthSuite, ControlsAtTheRunsTemperatureAreSkippedAndTimingsSplit) {
  const CellOutput out = run_output_length({{"name", "full"}},
                                           R"({"name": "output_length", "samples": 3,
                                     "prompt_tokens": 12, "max_new_tokens": 12,
                                     "temperature": 0.9, "control_seeds": 0,
                                     "control_temperatures": [0.901, 1.1]})");
  // 0.901 is 0.90 at the 2 decimals its row would show: the run's own temperature.
  ASSERT_EQ(out.summary["controls"].size(), 1u);
  EXPECT_EQ(out.summary["controls"][0]["temperature"], 1.1);
  int said = 0;
  for (const auto& w : out.warnings)
    said += w.find("control_temperatures: 0.90 is the run's temperature") != std::string::npos;
  EXPECT_EQ(said, 1) << json(out.warnings).dump();
  double tpot = 0, tpot_full = 0;
  int pairs = 0;
  for (const auto& r : out.records) {
    EXPECT_EQ(r["lengths_control"].size(), 1u);
    ASSERT_TRUE(r.contains("ttft_full_s") && r.contains("tpot_full_s"));
    EXPECT_GT(r["ttft_full_s"].get<double>(), 0);
    if (r["length"].get<double>() > 1 && r["length_full"].get<double>() > 1) {
      tpot += r["tpot_s"].get<double>(), tpot_full += r["tpot_full_s"].get<double>(), ++pairs;
    } else {
      EXPECT_EQ(r["length"].get<double>() > 1 ? r["tpot_full_s"] : r["tpot_s"], 0.0);
    }
  }
  // (Full against itself makes the same tokens, so each pair's gaps span all of them.)
  if (pairs > 0) {
    EXPECT_DOUBLE_EQ(out.summary["tpot_ratio"].get<double>(), tpot / tpot_full);
  } else {
    EXPECT_TRUE(out.summary["tpot_ratio"].is_null());
  }
  const json& ci = out.summary["e2e_ratio_ci95"];
  ASSERT_TRUE(ci.is_array());
  EXPECT_LE(ci[0].get<double>(), ci[1].get<double>());
  EXPECT_GT(ci[0].get<double>(), 0);
  // One sample: no interval.
  const json one = to_json(length_shift({10}, {8}));
  EXPECT_TRUE(one["d_mean_ci95"].is_null());
  EXPECT_TRUE(one["length_ratio_ci95"].is_null());
  EXPECT_TRUE(to_json(length_shift({10, 12}, {8, 12}))["d_mean_ci95"].is_array());
  try {
    parse_run_spec(json::parse(R"({"model": {"preset": "tiny-llama", "random_init": true},
        "suites": [{"name": "output_length", "control_temperatures": [1.0, 1.001]}]})"),
                   "t");
    FAIL() << "controls equal at 2 decimals must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("control_temperatures: lists 1.00 twice"),
              std::string::npos)
        << e.what();
  }
}

// The warnings about what the rows cannot say: a task of few samples among several (by name),
// and a trained model's lengths on random ids (noise); random weights on random ids say
// nothing more (their loader warns once per run).
// The output_length suite's first suite entry of `spec` with the full cache, on its model.
CellOutput run_full_output_length(const RunSpec& spec) {
  ModelProvider model(spec.model);
  Environment env;
  NullProgress progress;
  const json method = {{"name", "full"}};
  CellContext ctx{"test.cell", spec, env, method, spec.suites[0].params, 7, progress, model};
  return OutputLengthSuite().run(ctx);
}

TEST(OutputLengthSuite, WarnsOfSmallTasksAndRandomIdsOnATrainedModel) {
  const std::string path = ::testing::TempDir() + "/kvbench_two_tasks.jsonl";
  {
    std::ofstream f(path);
    for (int i = 0; i < 22; ++i)
      f << json{{"prompt", "Line " + std::to_string(i) + " of the text."},
                {"task", i < 19 ? "big" : "small"}}
               .dump()
        << "\n";
  }
  const CellOutput tasks = run_output_length(
      {{"name", "full"}}, R"({"name": "output_length", "prompts_file": ")" + path +
                              R"(", "max_new_tokens": 2, "control_temperatures": [],
                               "control_seeds": 0})");
  auto count = [](const CellOutput& out, const std::string& text) {
    int n = 0;
    for (const auto& w : out.warnings) n += w.find(text) != std::string::npos;
    return n;
  };
  EXPECT_EQ(count(tasks, "tasks with fewer than 20 samples: big (19), small (3)"), 1)
      << json(tasks.warnings).dump();
  EXPECT_EQ(count(tasks, "random token ids"), 0);
  const CellOutput random_weights = run_output_length(
      {{"name", "full"}}, R"({"name": "output_length", "samples": 2, "prompt_tokens": 8,
                              "max_new_tokens": 2, "control_temperatures": [],
                              "control_seeds": 0})");
  EXPECT_EQ(count(random_weights, "random token ids"), 0);
  const RunSpec spec = parse_run_spec(
      {{"suites", {json::parse(R"({"name": "output_length", "samples": 2, "prompt_tokens": 8,
                        "max_new_tokens": 2, "control_temperatures": [], "control_seeds": 0})")}},
       {"threads", 1},
       {"model",
        {{"path", std::string(KVBENCH_SOURCE_DIR) + "/assets/models/kvbench-retrieval-1m"}}}},
      "t");
  const CellOutput trained = run_full_output_length(spec);
  EXPECT_EQ(count(trained, "the prompts are random token ids: a trained model's lengths"), 1)
      << json(trained.warnings).dump();
}

// A text prompt's output is recorded as the accuracy suite records it: without the EOS that
// ended it (the length counts it) and without special tokens. The shipped model answers a
// passkey prompt with the key, then EOS.
TEST(OutputLengthSuite, OutputTextLeavesOutTheEosThatEndedIt) {
  const std::string dir = std::string(KVBENCH_SOURCE_DIR) + "/assets/models/kvbench-retrieval-1m";
  const Tokenizer tok = Tokenizer::load(dir);
  const TaskSample sample =
      make_task_sample("passkey", tok, {{"target_tokens", 300}, {"seed", 3}}, "test");
  const RunSpec spec = parse_run_spec({{"suites",
                                        {{{"name", "output_length"},
                                          {"prompt_texts", {sample.prompt}},
                                          {"max_new_tokens", 12},
                                          {"temperature", 0.0},
                                          {"control_temperatures", json::array()},
                                          {"control_seeds", 0}}}},
                                       {"threads", 1},
                                       {"model", {{"path", dir}}}},
                                      "t");
  const CellOutput out = run_full_output_length(spec);
  ASSERT_EQ(out.records.size(), 1u);
  const json& r = out.records[0];
  ASSERT_EQ(r["stop"], "eos") << r.dump();
  const std::string text = r["output"];
  EXPECT_EQ(text.find("<|"), std::string::npos) << text;  // no special token's text
  EXPECT_NE(text.find(sample.answers.at(0)), std::string::npos) << text;
  // The length counts the EOS the text leaves out.
  EXPECT_EQ(r["length"].get<int64_t>(), static_cast<int64_t>(tok.encode(text, false).size()) + 1)
      << text;
}

// Text prompts are estimated at their length, not at prompt_tokens (which sizes only the
// random-id prompts): a bound from their UTF-8 bytes, which the real tokenizer's count obeys.
TEST(OutputLengthSuite, TextPromptsAreEstimatedAtTheirLength) {
  std::string text;
  for (int i = 0; i < 150; ++i) text += "naïve café 東京, line " + std::to_string(i) + ". ";
  Harness h(json{{"name", "output_length"}, {"prompt_texts", {text}}, {"max_new_tokens", 8}});
  const ModelConfig* config = h.model.config_only();
  ASSERT_NE(config, nullptr);
  const double per_token = method_kv_bytes_per_token(h.method, *config, at::kBFloat16);
  auto estimate = [&](const json& params) {
    EstimateContext ctx{params, h.method, config, per_token, h.env};
    return OutputLengthSuite().estimate_bytes(ctx);
  };
  json random = h.spec.suites[0].params;
  random["prompt_texts"] = json::array();
  const int64_t tokens = static_cast<int64_t>(h.model.tokenizer().encode(text, true).size());
  ASSERT_GT(tokens, 64);
  EXPECT_LE(tokens, text_token_bound(text.size()));
  const uint64_t with_text = estimate(h.spec.suites[0].params), with_ids = estimate(random);
  EXPECT_GE(with_text, with_ids + static_cast<uint64_t>((tokens - 64) * per_token));
  // The same prompt from a prompts file is estimated the same.
  const std::string path = ::testing::TempDir() + "/kvbench_estimate_prompts.jsonl";
  std::ofstream(path) << json{{"prompt", "short"}}.dump() << "\n"
                      << json{{"prompt", text}}.dump() << "\n";
  json from_file = random;
  from_file["prompts_file"] = path;
  EXPECT_EQ(estimate(from_file), with_text);
  // The latency suite's prompt_text likewise.
  Harness lat(json{{"name", "latency"}, {"prompt_text", text}, {"new_tokens", 8}});
  json ids = lat.spec.suites[0].params;
  ids["prompt_text"] = "";
  auto latency_estimate = [&](const json& params) {
    EstimateContext ctx{params, lat.method, config, per_token, lat.env};
    return LatencySuite().estimate_bytes(ctx);
  };
  EXPECT_GT(latency_estimate(lat.spec.suites[0].params),
            latency_estimate(ids) +
                static_cast<uint64_t>((tokens - ids["prompt_tokens"].get<int64_t>()) * per_token));
}

// Greedy lengths have no sampling noise: temperature controls would measure sampling against
// greedy decoding, not a floor, so they are skipped with a warning saying why.
TEST(OutputLengthSuite, GreedyRunsSkipTheTemperatureControls) {
  CellOutput out = run_output_length({{"name", "full"}}, R"({"name": "output_length", "samples": 2,
                                      "prompt_tokens": 12, "max_new_tokens": 8,
                                      "temperature": 0})");
  EXPECT_TRUE(out.summary["controls"].empty());
  EXPECT_TRUE(out.summary["seed_controls"].empty());
  for (const auto& r : out.records) {
    EXPECT_TRUE(r["lengths_control"].empty());
    EXPECT_TRUE(r["lengths_seed_control"].empty());
  }
  bool said = false;
  for (const auto& w : out.warnings) said = said || w.find("temperature 0") != std::string::npos;
  EXPECT_TRUE(said);
  // Sampled runs keep them.
  out = run_output_length({{"name", "full"}}, R"({"name": "output_length", "samples": 2,
                           "prompt_tokens": 12, "max_new_tokens": 8, "temperature": 0.7})");
  EXPECT_EQ(out.summary["controls"].size(), 2u);
  EXPECT_EQ(out.summary["seed_controls"].size(), 1u);
}

// The seed controls are the noise floor: the full cache again at the run's temperature, each
// with its own sampling seed, so their lengths differ from the full cache's and from each
// other's where sampling moves them (a control replaying the sample's seed would match it
// everywhere). Scored like the method, with their offsets. At temperature 5 the tiny model's
// 512 ids are nearly uniform: a run of 200 tokens meets EOS about a third of the time.
TEST(OutputLengthSuite, SeedControlsDrawOtherSamples) {
  const CellOutput out = run_output_length({{"name", "full"}},
                                           R"({"name": "output_length", "samples": 8,
                                     "prompt_tokens": 12, "max_new_tokens": 200, "temperature": 5,
                                     "control_temperatures": [], "control_seeds": 2})");
  ASSERT_EQ(out.summary["seed_controls"].size(), 2u);
  int differ_full = 0, differ_each_other = 0;
  std::vector<double> full, first;
  for (const auto& r : out.records) {
    const json& seeds = r["lengths_seed_control"];
    ASSERT_EQ(seeds.size(), 2u);
    differ_full += seeds[0] != r["length_full"];
    differ_each_other += seeds[0] != seeds[1];
    full.push_back(r["length_full"]);
    first.push_back(seeds[0]);
  }
  EXPECT_GT(differ_full, 0);
  EXPECT_GT(differ_each_other, 0);
  const json& c = out.summary["seed_controls"][0];
  EXPECT_EQ(c["seed_offset"], 1);
  EXPECT_EQ(out.summary["seed_controls"][1]["seed_offset"], 2);
  EXPECT_EQ(c["d_mean"], to_json(length_shift(full, first))["d_mean"]);
  EXPECT_EQ(c["pairs_differing"], differ_full);
  EXPECT_EQ(OutputLengthSuite().summary_table(out).rows.size(), 4u);  // full, method, 2 seeds
}

TEST(OutputLengthSuite, CompressedRunsKeepEverySampleAndTheSameSeeds) {
  CellOutput out = run_output_length({{"name", "kivi-2"}, {"group", 16}, {"residual", 16}},
                                     R"({"name": "output_length", "samples": 3, "prompt_tokens": 40,
                            "max_new_tokens": 16, "control_temperatures": [], "control_seeds": 0})");
  ASSERT_EQ(out.records.size(), 3u);
  EXPECT_TRUE(out.summary["controls"].empty());
  const double rate = out.summary["runaway_rate"];
  EXPECT_GE(rate, 0.0);
  EXPECT_LE(rate, 1.0);
  // Same prompts (seeded by the run) as a full-cache cell: the baseline lengths agree.
  CellOutput full = run_output_length({{"name", "full"}}, R"({"name": "output_length", "samples": 3,
                                       "prompt_tokens": 40, "max_new_tokens": 16,
                                       "control_temperatures": [], "control_seeds": 0})");
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(out.records[i]["length_full"], full.records[i]["length_full"]);
    EXPECT_EQ(out.records[i]["prompt_hash"], full.records[i]["prompt_hash"]);
  }
}

// A prompts file's ids name its records as written: a string as it is, a number as its text,
// and a line without one by its line number.
TEST(OutputLengthSuite, PromptIdsAreTheFilesOwn) {
  const std::string path = ::testing::TempDir() + "/kvbench_prompt_ids.jsonl";
  std::ofstream(path) << R"({"prompt": "hello there", "id": "q1"}
{"prompt": "good bye", "id": 7}
{"prompt": "again"}
)";
  const CellOutput out = run_output_length({{"name", "full"}},
                                           R"({"name": "output_length", "prompts_file": ")" + path +
                                               R"(", "max_new_tokens": 4,
                                                "control_temperatures": [], "control_seeds": 0})");
  ASSERT_EQ(out.records.size(), 3u);
  EXPECT_EQ(out.records[0]["id"], "q1");
  EXPECT_EQ(out.records[1]["id"], "7");
  EXPECT_EQ(out.records[2]["id"], "line-3");
}

TEST(OutputLengthSuite, ABadPromptsFileNamesTheLine) {
  const std::string path = ::testing::TempDir() + "/kvbench_prompts.jsonl";
  {
    std::ofstream f(path);
    f << "{\"prompt\": \"hello\"}\n\n{not json}\n";
  }
  try {
    run_output_length({{"name", "full"}},
                      R"({"name": "output_length", "prompts_file": ")" + path + R"("})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(":3: not JSON"), std::string::npos) << e.what();
  }
}

TEST(AccuracySuite, NegativeSamplesOnAFixedTable) {
  // Task A: mean = median = 0.5. Sample 0: 1.0 >= 0.5 and 0.85 <= 0.9 x 1.0: negative.
  // Sample 1: 0.5 >= 0.5 but 0.5 > 0.45. Sample 2: baseline 0 never counts.
  // Task B: sample 3: 0.8 > 0.72; sample 4: 0.2 below the bar though the method scores 0.
  // Task C: mean 0.4, median 0.2: by the median rule sample 6 (0.2 >= 0.2, 0 <= 0.18) is
  // negative; by the mean rule it is below the bar, and 0.9 stays 0.9.
  const std::vector<std::string> tasks = {"A", "A", "A", "B", "B", "C", "C", "C"};
  const std::vector<double> full = {1.0, 0.5, 0.0, 0.8, 0.2, 0.1, 0.2, 0.9};
  const std::vector<double> method = {0.85, 0.5, 0.0, 0.8, 0.0, 0.0, 0.0, 0.9};
  EXPECT_EQ(negative_samples(tasks, full, method, 0.1, false),
            (std::vector<bool>{true, false, false, false, false, false, false, false}));
  EXPECT_EQ(negative_samples(tasks, full, method, 0.1, true),
            (std::vector<bool>{true, false, false, false, false, false, true, false}));
  // A larger theta asks for a deeper drop: 0.85 > 0.8 x 1.0.
  EXPECT_EQ(negative_samples(tasks, full, method, 0.2, false), std::vector<bool>(8, false));
  // Values that meet the rule exactly though their doubles miss by an ulp: three scores of 0.1
  // average 0.10000000000000002; 0.68 against (1 - 0.32) x 1.0 = 0.6799999999999999.
  EXPECT_EQ(negative_samples({"D", "D", "D"}, {0.1, 0.1, 0.1}, {0.0, 0.0, 0.0}, 0.1, false),
            std::vector<bool>(3, true));
  EXPECT_EQ(negative_samples({"E"}, {1.0}, {0.68}, 0.32, false), std::vector<bool>{true});
}

CellOutput run_accuracy(const json& method, const std::string& params) {
  return run_cell<AccuracySuite>(method, params);
}

TEST(AccuracySuite, TheFullCacheAgreesWithItselfOnEverySample) {
  CellOutput out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy", "task": "passkey",
                                 "samples": 3, "target_tokens": 300, "max_new_tokens": 8})");
  ASSERT_EQ(out.records.size(), 3u);
  for (const auto& r : out.records) {
    EXPECT_EQ(r["identical"], true);
    EXPECT_EQ(r["first_divergence"], -1);
    EXPECT_EQ(r["score"], r["score_full"]);
    EXPECT_EQ(r["output"], r["output_full"]);
    EXPECT_EQ(r["negative"], false);
    EXPECT_LE(r["prompt_tokens"].get<int64_t>(), 300);
    EXPECT_LE(r["length"].get<int64_t>(), 8);
  }
  EXPECT_EQ(out.summary["identical_outputs"], 1.0);
  EXPECT_EQ(out.summary["score_difference"], 0.0);
  EXPECT_EQ(out.summary["score_difference_ci95"][0], 0.0);
  EXPECT_EQ(out.summary["negative_samples"], 0);
  EXPECT_EQ(out.summary["theta_sweep"].size(), 6u);
  EXPECT_TRUE(out.summary["tasks"]["passkey"].contains("mcnemar"));  // pass/fail task
  EXPECT_FALSE(out.warnings.empty());                                // 3 samples are few
}

// The run's first suite (an accuracy one) with the full cache on `model`.
CellOutput run_full_accuracy(const RunSpec& spec, ModelProvider& model) {
  Environment env;
  NullProgress progress;
  const json method = {{"name", "full"}};
  CellContext ctx{"test.cell", spec, env, method, spec.suites[0].params, 7, progress, model};
  AccuracySuite suite;
  return suite.run(ctx);
}

// TPOT spreads e2e after the first token over every token timed: an answer ending in EOS
// (the project's trained model answers passkey and stops) includes the EOS's step.
TEST(AccuracySuite, TpotCountsTheEosStepItTimed) {
  const json cfg = {
      {"suites", {json::parse(R"({"name": "accuracy", "task": "passkey", "samples": 3,
                                  "target_tokens": 256})")}},
      {"threads", 1},
      {"model",
       {{"path", std::string(KVBENCH_SOURCE_DIR) + "/assets/models/kvbench-retrieval-1m"}}}};
  const RunSpec spec = parse_run_spec(cfg, "t");
  ModelProvider model(spec.model);
  const CellOutput out = run_full_accuracy(spec, model);
  int eos = 0;
  for (const auto& r : out.records) {
    const bool stopped = r["stop"] == "eos";
    eos += stopped;
    const double timed = r["length"].get<double>() + (stopped ? 1 : 0);
    const double e2e = r["e2e_s"], ttft = r["ttft_s"], tpot = r["tpot_s"];
    EXPECT_NEAR(ttft + tpot * (timed - 1), e2e, 1e-9 * e2e) << r["id"];
  }
  EXPECT_GT(eos, 0) << "no answer ended in EOS: the test shows nothing";
}

TEST(AccuracySuite, TaskParamsReachTheGeneratedSamples) {
  // Two keys asked at once: every sample's references hold two values; a fixed depth replaces
  // the spread over depths.
  CellOutput out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy",
      "task": "niah_multiquery", "samples": 2, "target_tokens": 400, "max_new_tokens": 4,
      "task_params": {"num_keys": 2, "num_queries": 2, "depth": 0.3}})");
  ASSERT_EQ(out.records.size(), 2u);
  for (const auto& r : out.records) {
    EXPECT_EQ(r.at("answers").size(), 2u) << r.dump();
    EXPECT_NE(r["id"].get<std::string>().find("-0.30"), std::string::npos) << r["id"];
    EXPECT_EQ(r.at("task_params").at("depth"), 0.3);  // groupable without parsing the id
    EXPECT_EQ(r.at("task_params").at("num_keys"), 2);
  }
  CellOutput spread = run_accuracy({{"name", "full"}}, R"({"name": "accuracy",
      "task": "niah_multiquery", "samples": 2, "target_tokens": 400, "max_new_tokens": 4})");
  ASSERT_EQ(spread.records.size(), 2u);
  EXPECT_EQ(spread.records[0].at("answers").size(), 4u);  // the task's default: 4 queries
  EXPECT_EQ(spread.records[0]["id"].get<std::string>().find("-0.30"), std::string::npos);
  // Spread over depths: the 1st of 2 samples sits at (0 + 0.5) / 2.
  EXPECT_EQ(spread.records[0].at("task_params").at("depth"), 0.25);
  EXPECT_EQ(spread.records[1].at("task_params").at("depth"), 0.75);
  EXPECT_EQ(spread.records[0].at("task_params").at("num_queries"), 4);  // defaults resolved
}

TEST(AccuracySuite, RunsTheLongBenchSampleFileWithItsTemplates) {
  const std::string dir = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench";
  CellOutput out = run_accuracy({{"name", "kivi-2"}, {"group", 16}, {"residual", 16}},
                                R"({"name": "accuracy", "data_file": ")" + dir + R"(/sample.jsonl",
                                    "templates_dir": ")" +
                                    dir + R"(/config", "max_new_tokens": 6})");
  ASSERT_EQ(out.records.size(), 7u);
  EXPECT_EQ(out.summary["tasks"].size(), 6u);  // two qasper rows
  // Each score is the row's metric of the output recorded beside it (first line for trec).
  const std::vector<LongBenchRow> rows = load_longbench_jsonl(dir + "/sample.jsonl");
  for (size_t i = 0; i < out.records.size(); ++i) {
    const json& r = out.records[i];
    EXPECT_EQ(r["id"], rows[i].id);
    EXPECT_EQ(r["score"].get<double>(), score_longbench(rows[i], r["output"]));
    EXPECT_EQ(r["score_full"].get<double>(), score_longbench(rows[i], r["output_full"]));
    EXPECT_GE(r["token_agreement"].get<double>(), 0.0);
    EXPECT_LE(r["token_agreement"].get<double>(), 1.0);
    EXPECT_GT(r["kv_bytes"].get<uint64_t>(), 0u);
  }
  const json& ci = out.summary["score_difference_ci95"];
  EXPECT_LE(ci[0].get<double>(), ci[1].get<double>());
  // LongBench's average is over data sets (qasper's two rows count once), each task's mean
  // within its interval.
  double macro = 0;
  for (const auto& [task, t] : out.summary["tasks"].items()) {
    macro += t["mean_score"].get<double>() / 6;
    // One sample of a graded score: a bootstrap interval would be [x, x]; none is given.
    if (t["samples"] == 1 && !t.contains("mcnemar")) {
      EXPECT_TRUE(t["mean_score_ci95"].is_null()) << task;
      continue;
    }
    EXPECT_LE(t["mean_score_ci95"][0].get<double>(), t["mean_score"].get<double>()) << task;
    EXPECT_GE(t["mean_score_ci95"][1].get<double>(), t["mean_score"].get<double>()) << task;
  }
  EXPECT_NEAR(out.summary["macro_mean_score"].get<double>(), macro, 1e-12);
}

// A synthetic sample's default cap has room for every answer: four UUIDs take more than the
// 64 tokens that suffice for numbers; a cap the user sets below them is warned about.
TEST(AccuracySuite, DefaultCapsHoldEveryAnswer) {
  CellOutput out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy",
      "task": "niah_multivalue", "samples": 1, "target_tokens": 600,
      "task_params": {"value_type": "uuids"}})");
  ASSERT_EQ(out.records.size(), 1u);
  const json& r = out.records[0];
  Harness h(json{{"name", "accuracy"}, {"task", "passkey"}});
  const std::vector<std::string> answers = r["answers"];
  const int64_t answer_tokens =
      static_cast<int64_t>(h.model.tokenizer().encode(join(answers, ", "), false).size());
  ASSERT_GT(answer_tokens, 64);
  EXPECT_EQ(r["max_new_tokens"], answer_tokens + 16);
  out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy", "task": "niah_multivalue",
      "samples": 1, "target_tokens": 600, "max_new_tokens": 8,
      "task_params": {"value_type": "uuids"}})");
  bool said = false;
  for (const auto& w : out.warnings) said = said || w.find("is below the") != std::string::npos;
  EXPECT_TRUE(said);
}

// A data file's prompts are estimated at their length (a bound from their bytes), cut at
// max_prompt_tokens, not at target_tokens (which sizes only synthetic samples).
TEST(AccuracySuite, DataFilePromptsAreEstimatedAtTheirLength) {
  const std::string file = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench/long.jsonl";
  // target_tokens small: only the data file can make the estimate large.
  Harness h(json{{"name", "accuracy"}, {"data_file", file}, {"target_tokens", 16}});
  const ModelConfig* config = h.model.config_only();
  ASSERT_NE(config, nullptr);
  const double per_token = method_kv_bytes_per_token(h.method, *config, at::kBFloat16);
  auto estimate = [&](json params) {
    EstimateContext ctx{params, h.method, config, per_token, h.env};
    return AccuracySuite().estimate_bytes(ctx);
  };
  const json whole = h.spec.suites[0].params;
  const std::vector<LongBenchRow> rows = load_longbench_jsonl(file);
  const int64_t tokens =
      static_cast<int64_t>(h.model.tokenizer().encode(longbench_prompt(rows[0], {}), true).size());
  ASSERT_GT(tokens, 1200);  // longer than target_tokens' 1024
  json cut = whole;
  cut["max_prompt_tokens"] = 64;
  EXPECT_GE(estimate(whole), estimate(cut) + static_cast<uint64_t>((tokens - 64) * per_token));
}

// With max_prompt_tokens 0 a data-file prompt is cut in the middle to the model's length less
// its generation cap, as LongBench's pred.py cuts to each model's: the positions stay inside what
// the model was trained on. A limit set by hand is kept, and warned about past the model.
TEST(AccuracySuite, DataFilePromptsAreCutToTheModelsLength) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "kvbench_accuracy_short_model";
  fs::remove_all(dir);
  write_preset_checkpoint(find_model_preset("tiny-llama"), dir.string(), 0);
  json config = json::parse(std::ifstream(dir / "config.json"));
  config["max_position_embeddings"] = 300;
  std::ofstream(dir / "config.json") << config.dump(2);
  const std::string file = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench/long.jsonl";
  auto run = [&](json suite) {
    suite["name"] = "accuracy", suite["data_file"] = file;
    if (!suite.contains("max_new_tokens")) suite["max_new_tokens"] = 8;
    const RunSpec spec = parse_run_spec(
        {{"suites", {suite}}, {"threads", 1}, {"model", {{"path", dir.string()}}}}, "t");
    ModelProvider model(spec.model);
    Environment env;
    NullProgress progress;
    const json method = {{"name", "full"}};
    std::vector<std::string> warnings;  // the runner's: check_generation_fits writes there
    CellContext ctx{"test.cell", spec,     env,   method,   spec.suites[0].params,
                    7,           progress, model, &warnings};
    CellOutput out = AccuracySuite().run(ctx);
    out.warnings.insert(out.warnings.end(), warnings.begin(), warnings.end());
    return out;
  };
  auto said = [](const CellOutput& out, const std::string& what) {
    return std::any_of(out.warnings.begin(), out.warnings.end(),
                       [&](const std::string& w) { return w.find(what) != std::string::npos; });
  };
  const CellOutput raw = run(json::object());
  // 293 positions are free; the cut keeps halves of ⌊293 / 2⌋ tokens (LongBench's rule).
  EXPECT_EQ(raw.records.at(0)["prompt_tokens"], 292);
  EXPECT_TRUE(said(raw,
                   "1 of 1 prompts were cut in the middle to fit the model's "
                   "max_position_embeddings (300)"))
      << json(raw.warnings).dump();
  EXPECT_FALSE(said(raw, "past the model's max_position_embeddings"));
  // Wrapped in a chat turn (the text encoded again): still inside.
  const CellOutput chat = run({{"chat_format", "llama3"}});
  EXPECT_LE(chat.records.at(0)["prompt_tokens"].get<int64_t>(), 300 - 8 + 1);
  EXPECT_GE(chat.records.at(0)["prompt_tokens"].get<int64_t>(), 300 - 8 + 1 - 4);
  EXPECT_FALSE(said(chat, "past the model's max_position_embeddings"));
  const CellOutput set = run({{"max_prompt_tokens", 400}});
  EXPECT_EQ(set.records.at(0)["prompt_tokens"], 400);
  EXPECT_FALSE(said(set, "prompts were cut"));
  EXPECT_TRUE(said(set, "past the model's max_position_embeddings (300)"));
  // A cap that leaves no room for a prompt is an error naming the row, not a cut to nothing.
  try {
    run({{"max_new_tokens", 300}});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 'lb-qasper-long-0': a generation cap of 300 "
                                         "tokens leaves 1 of the model's "
                                         "max_position_embeddings (300)"),
              std::string::npos)
        << e.what();
  }
  // The memory estimate bounds the cut prompt, as it bounds one cut at the same limit by hand.
  const RunSpec spec = parse_run_spec(
      {{"suites", {{{"name", "accuracy"}, {"data_file", file}, {"max_new_tokens", 8}}}},
       {"threads", 1},
       {"model", {{"path", dir.string()}}}},
      "t");
  ModelProvider provider(spec.model);
  const ModelConfig* c = provider.config_only();
  ASSERT_NE(c, nullptr);
  const json method = {{"name", "full"}};
  const double per_token = method_kv_bytes_per_token(method, *c, at::kFloat);
  Environment env;
  auto estimate = [&](int64_t limit) {
    json params = spec.suites[0].params;
    params["max_prompt_tokens"] = limit;
    return AccuracySuite().estimate_bytes({params, method, c, per_token, env});
  };
  // (A limit set by hand has the text estimate's specials on top.)
  EXPECT_LE(estimate(0), estimate(293));
  EXPECT_LT(estimate(0), estimate(4000));
  fs::remove_all(dir);
}

// kvbench attends every token: a cell whose positions pass the model's sliding_window is told
// that its full cache is full attention's, not the windowed model's (random weights or not).
TEST(Workload, PositionsPastTheSlidingWindowAreWarnedAbout) {
  testing_support::Harness h(json{{"name", "latency"}}, "tiny-mistral");
  ASSERT_EQ(h.model.get().config().sliding_window, std::optional<int64_t>(4096));
  std::vector<std::string> warnings;
  CellContext ctx{h.id, h.spec,     h.env,   h.method, h.spec.suites[0].params,
                  7,    h.progress, h.model, &warnings};
  check_generation_fits(ctx, 1, 4095, 2, "latency");  // positions 0 .. 4095: inside
  EXPECT_TRUE(warnings.empty()) << json(warnings).dump();
  check_generation_fits(ctx, 1, 4096, 2, "latency");
  int said = 0;  // (its max_position_embeddings is 4096 too, and warned about apart)
  for (const auto& w : warnings)
    said += w.find("pass the model's sliding_window (4096)") != std::string::npos;
  EXPECT_EQ(said, 1) << json(warnings).dump();
}

// The comparison suites' baseline cache is charged beside the method's: 2^40 bytes per token
// over 1000 tokens cannot fit, where the method's own bytes do. The baseline is the full cache
// in the run's KV dtype (tiny-llama's bf16 here).
TEST(Workload, ABaselineBesideTheMethodIsCharged) {
  testing_support::Harness h(json{{"name", "latency"}}, "tiny-llama");
  CellContext ctx{h.id, h.spec, h.env, h.method, h.spec.suites[0].params, 7, h.progress, h.model};
  EXPECT_NO_THROW(check_generation_fits(ctx, 1, 900, 100, "fidelity"));
  EXPECT_NO_THROW(check_generation_fits(ctx, 1, 900, 100, "fidelity", 0, 1.0));
  EXPECT_THROW(check_generation_fits(ctx, 1, 900, 100, "fidelity", 0, 1099511627776.0), Error);
  const ModelConfig& c = h.model.get().config();
  EXPECT_EQ(h.model.kv_dtype(), at::kBFloat16);
  const double m = baseline_bytes_per_token(ctx);
  EXPECT_DOUBLE_EQ(m, 2.0 * double(c.num_layers * c.num_kv_heads * c.head_dim) * 2);
  // Added, not a floor: at a length where the full method's own generation takes ~75% of
  // what the check allows, its baseline beside it (the same bytes per token; a generation's
  // other bytes do not double) passes the limit, where a floor (the larger of the two) would
  // not.
  const uint64_t available = available_memory_bytes();
  if (available == 0) GTEST_SKIP() << "the available memory is unknown here";
  const double limit = double(available / 10 * 8);
  const at::ScalarType dtype = h.model.placement().dtype;
  int64_t lo = 1, hi = int64_t{1} << 40;  // new tokens: generation_bytes(m) <= 0.75 limit
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (double(generation_bytes(c, m, 1, 1, mid, dtype)) <= 0.75 * limit ? lo : hi) = mid;
  }
  ASSERT_GT(double(generation_bytes(c, 2 * m, 1, 1, lo, dtype)), 1.1 * limit);
  EXPECT_NO_THROW(check_generation_fits(ctx, 1, 1, lo, "fidelity"));
  EXPECT_THROW(check_generation_fits(ctx, 1, 1, lo, "fidelity", 0, m), Error);
}

// A LongBench qasper row: a set LongBench wraps in the chat format, as one user turn
// "Ann came.\n\nWho?".
json qasper_row() {
  return {{"_id", "b"},
          {"dataset", "qasper"},
          {"input", "Who?"},
          {"context", "Ann came."},
          {"answers", {"Ann"}}};
}

// Prompts as the model reads them: a RULER file prepared with the model's chat template keeps
// its turn markers (special tokens) and one BOS, and chat_format does not wrap it again;
// LongBench's few-shot and completion sets (trec, lcc, ...) are fed raw as its pred.py does,
// the others wrapped.
TEST(AccuracySuite, PromptsKeepTheirSpecialTokensAndWrapAsLongBenchDoes) {
  const std::string path = ::testing::TempDir() + "/kvbench_templated_ruler.jsonl";
  const std::string text =
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nThe number is 42. What is "
      "the number?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  std::ofstream(path) << json{{"index", 0},
                              {"input", text},
                              {"answer_prefix", "The number is"},
                              {"outputs", {"42"}}}
                             .dump()
                      << "\n";
  auto run = [&](const std::string& file, json params) {
    params["name"] = "accuracy";
    params["data_file"] = file;
    params["max_new_tokens"] = 2;
    testing_support::Harness h(params, "tiny-llama");
    AccuracySuite suite;
    return h.run(suite);
  };
  testing_support::Harness h(json{{"name", "accuracy"}, {"task", "passkey"}}, "tiny-llama");
  const Tokenizer& tok = h.model.tokenizer();
  ASSERT_TRUE(tok.bos_id().has_value());
  std::vector<int32_t> ids = tok.encode(text + "The number is", true);
  ASSERT_EQ(ids[0], *tok.bos_id());
  ASSERT_EQ(ids[1], *tok.bos_id());  // the text's BOS after the one encode adds
  ids.erase(ids.begin());
  const std::vector<int64_t> want(ids.begin(), ids.end());
  for (const json& extra : {json{{"data_format", "ruler"}},
                            json{{"data_format", "ruler"}, {"chat_format", "llama3"}}}) {
    const CellOutput out = run(path, extra);
    ASSERT_EQ(out.records.size(), 1u);
    EXPECT_EQ(out.records[0]["prompt_hash"], prompt_hash(want)) << extra;
    EXPECT_EQ(out.records[0]["prompt_tokens"], want.size()) << extra;
    bool said = false;
    for (const auto& w : out.warnings)
      said = said || w.find("not wrapped again") != std::string::npos;
    EXPECT_EQ(said, extra.contains("chat_format")) << extra;
  }
  // LongBench rows: lcc raw, qasper wrapped as one user turn.
  const std::string lb = ::testing::TempDir() + "/kvbench_chat_sets.jsonl";
  std::ofstream(lb) << json{{"_id", "a"},
                            {"dataset", "lcc"},
                            {"input", ""},
                            {"context", "def f(x):\n    return"},
                            {"answers", {"x"}}}
                           .dump()
                    << "\n"
                    << qasper_row().dump() << "\n";
  const CellOutput out = run(lb, {{"chat_format", "llama3"}});
  ASSERT_EQ(out.records.size(), 2u);
  EXPECT_EQ(out.summary["chat_format"], "llama3");  // the format used, as auto would resolve it
  const auto hash_of = [&](const std::string& t, bool special) {
    const std::vector<int32_t> v = tok.encode(t, special);
    return prompt_hash(std::vector<int64_t>(v.begin(), v.end()));
  };
  EXPECT_EQ(out.records[0]["prompt_hash"], hash_of("def f(x):\n    return\n\n", true));
  EXPECT_EQ(out.records[1]["prompt_hash"],
            hash_of(render_chat("llama3", {{"user", "Ann came.\n\nWho?"}}), false));
}

// A synthetic task's prompt ends with RULER's answer prefix: unwrapped, the prompt's text as it
// is; chat-wrapped, the rest as the user turn and the prefix after the assistant's header, so
// the reply continues it (RULER's layout).
TEST(AccuracySuite, AChatWrappedTaskPutsItsAnswerPrefixInTheReply) {
  testing_support::Harness probe(json{{"name", "accuracy"}, {"task", "passkey"}}, "tiny-llama");
  const Tokenizer& tok = probe.model.tokenizer();
  for (const char* task :
       {"passkey", "niah_single", "niah_multiquery", "variable_tracking", "common_words"}) {
    const TaskSample t = make_task_sample(task, tok, {{"target_tokens", 6144}, {"seed", 1}}, "t");
    EXPECT_FALSE(t.answer_prefix.empty()) << task;
    ASSERT_GE(t.prompt.size(), t.answer_prefix.size()) << task;
    EXPECT_EQ(t.prompt.substr(t.prompt.size() - t.answer_prefix.size()), t.answer_prefix) << task;
  }
  const TaskSample sample =
      make_task_sample("passkey", tok, {{"target_tokens", 300}, {"seed", 0}, {"depth", 0.5}}, "t");
  ASSERT_EQ(sample.answer_prefix, " The pass key is");
  const std::string body =
      sample.prompt.substr(0, sample.prompt.size() - sample.answer_prefix.size());
  auto hash_of = [&](const std::string& text, bool special) {
    const std::vector<int32_t> v = tok.encode(text, special);
    return prompt_hash(std::vector<int64_t>(v.begin(), v.end()));
  };
  for (const std::string format : {"", "llama3"}) {
    testing_support::Harness h(json{{"name", "accuracy"},
                                    {"task", "passkey"},
                                    {"samples", 1},
                                    {"target_tokens", 300},
                                    {"max_new_tokens", 2},
                                    {"chat_format", format}},
                               "tiny-llama");
    AccuracySuite suite;
    const CellOutput out = h.run(suite);
    ASSERT_EQ(out.records.size(), 1u);
    EXPECT_EQ(out.records[0]["prompt_hash"],
              format.empty()
                  ? hash_of(sample.prompt, true)
                  : hash_of(render_chat(format, {{"user", body}}) + sample.answer_prefix, false))
        << format;
  }
}

// A tokenizer whose tokenizer_config sets add_eos_token ends every encoded prompt with EOS: a
// prompt cut and re-encoded with RULER's answer prefix (or a fidelity corpus) holds it once, at
// the end (the prefix after the body), not once inside as text read back.
TEST(AccuracySuite, AnAddEosTokenizersEosEndsThePromptOnce) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "kvbench_add_eos_model";
  fs::remove_all(dir);
  fs::copy(fs::path(KVBENCH_SOURCE_DIR) / "assets/models/kvbench-retrieval-1m", dir);
  json tc = json::parse(std::ifstream(dir / "tokenizer_config.json"));
  tc["add_eos_token"] = true;
  std::ofstream(dir / "tokenizer_config.json") << tc.dump(2);
  const std::string data = (dir / "ruler.jsonl").string();
  std::ofstream(data) << json{{"index", 0},
                              {"input", "The number is 42. What is the number?"},
                              {"answer_prefix", " The number is"},
                              {"outputs", {"42"}}}
                             .dump()
                      << "\n";
  const json cfg = {{"suites",
                     {{{"name", "accuracy"},
                       {"data_file", data},
                       {"data_format", "ruler"},
                       {"max_new_tokens", 2}}}},
                    {"threads", 1},
                    {"model", {{"path", dir.string()}}}};
  const RunSpec spec = parse_run_spec(cfg, "t");
  ModelProvider model(spec.model);
  const Tokenizer& tok = model.tokenizer();
  const std::vector<int32_t> want =
      tok.encode("The number is 42. What is the number? The number is", true);
  ASSERT_EQ(tok.special_suffix().size(), 1u);
  const int32_t eos = tok.special_suffix()[0];
  ASSERT_EQ(want.back(), eos);
  ASSERT_EQ(std::count(want.begin(), want.end(), eos), 1);
  const CellOutput out = run_full_accuracy(spec, model);
  ASSERT_EQ(out.records.size(), 1u);
  EXPECT_EQ(out.records[0]["prompt_tokens"], want.size());
  EXPECT_EQ(out.records[0]["prompt_hash"],
            prompt_hash(std::vector<int64_t>(want.begin(), want.end())));
  fs::remove_all(dir);
}

// A chat-wrapped prompt is encoded without the tokenizer's own specials, as transformers'
// apply_chat_template encodes its rendered text: an add_eos_token tokenizer's EOS is not
// appended to it (the turn markers end the prompt; the model answers after them), and the
// template's BOS is the only one. A LongBench row cut and re-wrapped is exactly the rendered
// turn; it and a synthetic task's wrapped prompt are the same tokens as without the flag.
TEST(AccuracySuite, AChatWrappedPromptGetsNoAddEosTokenizersEos) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(::testing::TempDir()) / "kvbench_chat_add_eos";
  fs::remove_all(root);
  const std::string lb = (root / "longbench.jsonl").string();
  for (const char* name : {"plain", "eos"}) {
    write_preset_checkpoint(find_model_preset("tiny-llama"), (root / name).string(), 0);
  }
  json tc = json::parse(std::ifstream(root / "eos" / "tokenizer_config.json"));
  tc["add_eos_token"] = true;
  std::ofstream(root / "eos" / "tokenizer_config.json") << tc.dump(2);
  std::ofstream(lb) << qasper_row().dump() << "\n";
  const json suites[] = {
      {{"name", "accuracy"}, {"data_file", lb}, {"chat_format", "llama3"}, {"max_new_tokens", 2}},
      {{"name", "accuracy"},
       {"task", "passkey"},
       {"samples", 1},
       {"target_tokens", 200},
       {"chat_format", "llama3"},
       {"max_new_tokens", 2}}};
  std::map<std::string, std::vector<json>> prompts;  // per model: each suite's prompt_hash
  for (const char* name : {"plain", "eos"}) {
    for (const json& suite : suites) {
      const RunSpec spec = parse_run_spec(
          {{"suites", {suite}}, {"threads", 1}, {"model", {{"path", (root / name).string()}}}},
          "t");
      ModelProvider model(spec.model);
      const Tokenizer& tok = model.tokenizer();
      // The flag took: encode(text, true) ends in EOS on the flagged copy only.
      EXPECT_EQ(tok.special_suffix().size(), std::string(name) == "eos" ? 1u : 0u);
      const CellOutput out = run_full_accuracy(spec, model);
      ASSERT_EQ(out.records.size(), 1u);
      prompts[name].push_back({out.records[0]["prompt_hash"], out.records[0]["prompt_tokens"]});
      if (!suite.contains("data_file")) continue;
      const std::vector<int32_t> want =
          tok.encode(render_chat("llama3", {{"user", "Ann came.\n\nWho?"}}), false);
      EXPECT_EQ(out.records[0]["prompt_tokens"], want.size()) << name;
      EXPECT_EQ(out.records[0]["prompt_hash"],
                prompt_hash(std::vector<int64_t>(want.begin(), want.end())))
          << name;
    }
  }
  EXPECT_EQ(prompts["plain"], prompts["eos"]);
  fs::remove_all(root);
}

// LongBench-E's length buckets (its eval.py scorer_e): per task, the rows' own length field
// under 4000, under 8000 and the rest, each bucket's mean the mean of its rows' scores.
TEST(AccuracySuite, LongBenchLengthsFallIntoScorerEsBuckets) {
  const std::string fixtures = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench";
  const std::string path = ::testing::TempDir() + "/kvbench_longbench_e.jsonl";
  {
    std::ifstream in(fixtures + "/sample.jsonl");
    std::ofstream f(path);
    std::string line;
    const std::map<std::string, int64_t> lengths = {{"trec", 5000}, {"lcc", 8000}};
    int qasper = 0;
    while (std::getline(in, line)) {
      json row = json::parse(line);
      const std::string d = row["dataset"];
      if (lengths.count(d)) row["length"] = lengths.at(d);
      if (d == "qasper" && qasper++ == 1) row["length"] = 3999;
      f << row.dump() << "\n";
    }
  }
  const CellOutput out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy", "data_file": ")" +
                                                              path + R"(", "max_new_tokens": 2})");
  const json& tasks = out.summary["tasks"];
  EXPECT_EQ(tasks["qasper"]["length_buckets"]["0-4k"]["samples"], 2);
  EXPECT_EQ(tasks["qasper"]["length_buckets"].size(), 1u);
  EXPECT_EQ(tasks["trec"]["length_buckets"]["4-8k"]["samples"], 1);
  EXPECT_EQ(tasks["lcc"]["length_buckets"]["8k+"]["samples"], 1);
  for (const json& r : out.records) {
    if (r["task"] != "lcc") continue;
    EXPECT_EQ(tasks["lcc"]["length_buckets"]["8k+"]["mean_score"], r["score"]);
    EXPECT_EQ(tasks["lcc"]["length_buckets"]["8k+"]["mean_score_full"], r["score_full"]);
  }
}

// samsum generates as LongBench's pred.py does: a newline ends the output (the accuracy suite
// adds it to the stop ids and keeps every stop id from the first token: generator_test's
// FirstTokenSuppression); other sets stop at EOS alone.
TEST(AccuracySuite, SamsumAlsoStopsAtANewline) {
  testing_support::Harness h(json{{"name", "accuracy"}, {"task", "passkey"}}, "tiny-llama");
  const Tokenizer& tok = h.model.tokenizer();
  const std::vector<int64_t> stops = longbench_extra_stop_ids("samsum", tok);
  ASSERT_EQ(stops.size(), 1u);
  EXPECT_EQ(tok.decode({static_cast<int32_t>(stops[0])}), "\n");
  EXPECT_EQ(longbench_extra_stop_ids("samsum_e", tok), stops);  // LongBench-E
  EXPECT_TRUE(longbench_extra_stop_ids("qasper", tok).empty());
  EXPECT_TRUE(longbench_extra_stop_ids("trec", tok).empty());
}

TEST(AccuracySuite, DatasetsWithoutATemplateAreNamedInAWarning) {
  // Templates for qasper only: gov_report (the second row) falls back to the generic prompt.
  const std::string fixtures = std::string(KVBENCH_SOURCE_DIR) + "/tests/fixtures/longbench";
  const std::string dir = ::testing::TempDir() + "/kvbench_partial_templates";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/dataset2prompt.json") << R"({"qasper": "{context} Q: {input} A:"})";
  std::ofstream(dir + "/dataset2maxlen.json") << R"({"qasper": 4})";
  CellOutput out = run_accuracy({{"name", "full"}}, R"({"name": "accuracy", "data_file": ")" +
                                                        fixtures + R"(/sample.jsonl",
      "templates_dir": ")" + dir + R"(", "samples": 2, "max_new_tokens": 2})");
  ASSERT_EQ(out.records.size(), 2u);
  int named = 0;
  for (const std::string& w : out.warnings)
    named += w.find("has no prompt template for gov_report: those rows use the generic") !=
             std::string::npos;
  EXPECT_EQ(named, 1) << json(out.warnings).dump();
}

TEST(AccuracySuite, AutoChatFormatNeedsACheckpointTemplate) {
  try {
    run_accuracy({{"name", "full"}}, R"({"name": "accuracy", "task": "passkey", "samples": 1,
                                        "target_tokens": 300, "chat_format": "auto"})");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("chat_format auto needs model.path"), std::string::npos)
        << e.what();
  }
}

TEST(AccuracySuite, NeedsExactlyOneSource) {
  EXPECT_THROW(run_accuracy({{"name", "full"}}, R"({"name": "accuracy"})"), Error);
  EXPECT_THROW(run_accuracy({{"name", "full"}},
                            R"({"name": "accuracy", "task": "passkey", "data_file": "x"})"),
               Error);
}

}  // namespace
}  // namespace kvbench
