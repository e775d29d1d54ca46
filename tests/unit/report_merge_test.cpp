// `kvbench report` on small hand-built reports: merging files, ratios against the baseline,
// later files winning, failed cells, the Pareto front and the three renderings.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <set>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/report/report_merge.h"
#include "kvbench/report/report_reader.h"
#include "kvbench/report/report_tables.h"
#include "kvbench/report/table_render.h"

namespace kvbench {
namespace {

using json = nlohmann::json;

LoadedReport make_report(const std::string& source, std::vector<json> cells) {
  json doc = {{"schema", "kvbench.report"},
              {"schema_version", 2},
              {"config",
               {{"attention", "cpu"},
                {"device", "cpu"},
                {"threads", 2},
                {"model", {{"preset", "tiny-llama"}, {"random_init", true}}}}},
              {"cells", cells}};
  check_report_document(doc, source);
  return {source, doc};
}

json kv_memory(double bits, int64_t total) {
  return {{"bits_per_value", bits},
          {"ratio_to_fp16", bits / 16},
          {"retention_bytes", total / 10},
          {"measured", {{"total", total}, {"payload", total}, {"metadata", 0}}}};
}

json latency_cell(const std::string& method, double ttft, double tpot, double bits,
                  int64_t kv_bytes) {
  return {{"id", "latency." + method + ".0000000000000001"},
          {"suite", "latency"},
          {"method", {{"name", method}}},
          {"params", {{"prompt_tokens", 16}, {"new_tokens", 4}, {"batch", 1}}},
          {"status", "ok"},
          {"records", json::array()},
          {"summary",
           {{"ttft_s", {{"median", ttft}, {"p99", 2 * ttft}}},
            {"tpot_s", {{"median", tpot}, {"p99", 2 * tpot}}},
            {"batch", 1},
            {"kv_bytes_peak", kv_bytes},
            {"kv_memory", kv_memory(bits, kv_bytes)}}}};
}

json throughput_cell(const std::string& method, std::vector<double> decode_tok_s, double bits) {
  json records = json::array();
  int batch = 1;
  for (double d : decode_tok_s) {
    records.push_back({{"kind", "throughput"},
                       {"batch", batch},
                       {"prompt_tokens", 16},
                       {"new_tokens", 4},
                       {"prefill_tok_s", 1000.0 * batch},
                       {"decode_tok_s", d},
                       {"decode_host_share", 0.25 * batch},
                       {"kv_bytes", 1000 * batch},
                       {"kv_memory", kv_memory(bits, 1000 * batch)}});
    batch *= 2;
  }
  return {{"id", "throughput." + method + ".0000000000000002"},
          {"suite", "throughput"},
          {"method", {{"name", method}}},
          {"params", {{"batch", {1, 2}}, {"prompt_tokens", {16}}, {"new_tokens", {4}}}},
          {"status", "ok"},
          {"records", records},
          {"summary", {{"points", records.size()}}}};
}

json fidelity_cell(const std::string& method, double kl) {
  return {
      {"id", "fidelity." + method + ".0000000000000003"},
      {"suite", "fidelity"},
      {"method", {{"name", method}}},
      {"params", {{"windows", 1}}},
      {"status", "ok"},
      {"records", json::array()},
      {"summary",
       {{"kl_mean", kl}, {"kl_p99", 3 * kl}, {"top1_agreement", 1 - kl}, {"ppl_ratio", 1 + kl}}}};
}

json failed_cell(const std::string& method, const std::string& error) {
  return {{"id", "latency." + method + ".00000000000000ff"},
          {"suite", "latency"},
          {"method", {{"name", method}}},
          {"params", {{"prompt_tokens", 4096}}},
          {"status", "failed"},
          {"error", error},
          {"records", json::array()},
          {"summary", json::object()}};
}

const ResultTable& table(const ReportTables& t, const std::string& name) {
  for (const ResultTable& r : t.tables) {
    if (r.name == name) return r;
  }
  throw std::runtime_error("no table " + name);
}

json value(const ResultTable& t, size_t row, const std::string& column) {
  const auto it = std::find(t.columns.begin(), t.columns.end(), column);
  if (it == t.columns.end()) throw std::runtime_error("no column " + column);
  return t.rows.at(row).at(static_cast<size_t>(it - t.columns.begin()));
}

TEST(ReportMerge, TwoFilesGiveRatiosAgainstTheBaseline) {
  const auto a = make_report("a.json", {latency_cell("full", 0.1, 0.02, 16, 4000),
                                        latency_cell("int4", 0.12, 0.01, 5, 1250)});
  const auto b = make_report(
      "b.json", {throughput_cell("full", {100, 180}, 16), throughput_cell("int4", {150, 360}, 5)});
  const MergedReports merged = merge_reports({a, b});
  EXPECT_EQ(merged.cells.size(), 4u);
  EXPECT_TRUE(merged.warnings.empty());
  const ReportTables t = build_report_tables(merged, "");
  EXPECT_EQ(t.baseline, "full");  // the default, present here

  const ResultTable& lat = table(t, "latency");
  ASSERT_EQ(lat.rows.size(), 2u);
  EXPECT_EQ(value(lat, 0, "method"), "full");  // the baseline first
  EXPECT_EQ(value(lat, 1, "method"), "int4");
  EXPECT_DOUBLE_EQ(value(lat, 0, "tpot_median_s/full").get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(value(lat, 1, "tpot_median_s/full").get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(value(lat, 1, "ttft_median_s/full").get<double>(), 1.2);
  EXPECT_DOUBLE_EQ(value(lat, 1, "kv_bytes/full").get<double>(), 0.3125);
  EXPECT_DOUBLE_EQ(value(lat, 1, "bits_per_value").get<double>(), 5.0);
  // The policy's bookkeeping, apart from kv_bytes (here a tenth of them), no ratio column.
  EXPECT_EQ(value(lat, 1, "retention_bytes").get<int64_t>(), 125);
  EXPECT_EQ(std::count(lat.columns.begin(), lat.columns.end(), "retention_bytes/full"), 0);

  // Throughput: one row per point, each against the baseline at the same point.
  const ResultTable& thr = table(t, "throughput");
  ASSERT_EQ(thr.rows.size(), 4u);
  EXPECT_EQ(value(thr, 0, "batch"), 1);
  EXPECT_EQ(value(thr, 1, "method"), "int4");
  EXPECT_DOUBLE_EQ(value(thr, 1, "decode_tok_s/full").get<double>(), 1.5);
  EXPECT_EQ(value(thr, 3, "batch"), 2);
  EXPECT_DOUBLE_EQ(value(thr, 3, "decode_tok_s/full").get<double>(), 2.0);
  // The host's share of a step is shown as it is, with no ratio to the baseline's.
  EXPECT_DOUBLE_EQ(value(thr, 3, "host_share").get<double>(), 0.5);
  EXPECT_EQ(std::count(thr.columns.begin(), thr.columns.end(), "host_share/full"), 0);
  // batch, prompt_tokens and new_tokens are points, not varying parameters.
  EXPECT_EQ(std::count(thr.columns.begin(), thr.columns.end(), "batch"), 1);
}

// Two full cells of other ids in one setup (another checkpoint at the same path, from an older
// report): no ratio divides by whichever came first; a note says why the group has none.
TEST(ReportMerge, AGroupWithTwoBaselineRowsGetsNoRatios) {
  json old_full = latency_cell("full", 0.1, 0.02, 16, 4000);
  old_full["id"] = "latency.full.00000000000000aa";
  const auto a = make_report("a.json", {old_full});
  const auto b = make_report("b.json", {latency_cell("full", 0.1, 0.04, 16, 4000),
                                        latency_cell("int4", 0.12, 0.01, 5, 1250)});
  const ReportTables t = build_report_tables(merge_reports({a, b}), "");
  const ResultTable& lat = table(t, "latency");
  ASSERT_EQ(lat.rows.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(value(lat, i, "tpot_median_s/full").is_null()) << i;
  bool noted = false;
  for (const std::string& n : t.notes)
    noted = noted || n.find(
                         "latency: 1 group(s) of one setup, parameters and point hold several "
                         "full rows") != std::string::npos;
  EXPECT_TRUE(noted);
}

// The phases table: a row per throughput point that has phases (points of a run without a
// warmup have none), the attention's time against the baseline's.
TEST(ReportMerge, PhasesTableSaysWhereTheStepWent) {
  auto with_phases = [](json cell, double attend) {
    json& r = cell["records"][0];
    json step = json::object();
    for (const char* k : {"embed", "norm", "qkv_rope", "o_proj", "mlp", "lm_head", "sample"})
      step[k] = 0.001;
    step["attend"] = attend;
    r["phases"] = {{"decode_step_s", step},
                   {"decode_total_s", attend + 0.007},
                   {"decode_share", {{"attend", attend / (attend + 0.007)}}}};
    return cell;
  };
  const ReportTables t = build_report_tables(
      merge_reports(
          {make_report("a.json", {with_phases(throughput_cell("full", {100, 180}, 16), 0.004),
                                  with_phases(throughput_cell("int4", {150, 360}, 5), 0.001)})}),
      "");
  const ResultTable& ph = table(t, "phases");
  ASSERT_EQ(ph.rows.size(), 2u);  // batch 2 has no phases in either cell
  EXPECT_EQ(value(ph, 1, "method"), "int4");
  EXPECT_EQ(value(ph, 1, "batch"), 1);
  EXPECT_DOUBLE_EQ(value(ph, 1, "attend_s/full").get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(value(ph, 1, "step_s/full").get<double>(), 0.008 / 0.011);
  EXPECT_DOUBLE_EQ(value(ph, 0, "attend_share").get<double>(), 0.004 / 0.011);
  EXPECT_DOUBLE_EQ(value(ph, 0, "mlp_s").get<double>(), 0.001);

  const ReportTables none = build_report_tables(
      merge_reports({make_report("b.json", {throughput_cell("full", {100}, 16)})}), "");
  for (const ResultTable& r : none.tables) EXPECT_NE(r.name, "phases");
}

TEST(ReportMerge, LaterFileWinsWithAWarning) {
  const auto a = make_report("a.json", {latency_cell("full", 0.1, 0.02, 16, 4000),
                                        latency_cell("int4", 0.1, 0.04, 5, 1250)});
  const auto b = make_report("b.json", {latency_cell("int4", 0.1, 0.01, 5, 1250)});
  const MergedReports merged = merge_reports({a, b});
  ASSERT_EQ(merged.cells.size(), 2u);
  ASSERT_EQ(merged.warnings.size(), 1u);
  EXPECT_NE(merged.warnings[0].find("a.json"), std::string::npos);
  EXPECT_NE(merged.warnings[0].find("b.json"), std::string::npos);
  EXPECT_EQ(merged.cells[1].source, "b.json");
  const ReportTables t = build_report_tables(merged, "");
  EXPECT_DOUBLE_EQ(value(table(t, "latency"), 1, "tpot_median_s").get<double>(), 0.01);
}

// A report of a model with random weights says so in the tables' notes (markdown carries
// them), naming the file; a trained model's report adds no such note.
TEST(ReportMerge, RandomWeightsAreNoted) {
  auto a = make_report("random.json", {latency_cell("full", 0.1, 0.02, 16, 4000)});
  a.doc["model"] = {{"random_weights", true}};
  auto b = make_report("trained.json", {latency_cell("int4", 0.1, 0.04, 5, 1250)});
  b.doc["model"] = {{"random_weights", false}};
  auto noted = [](const ReportTables& t) {
    for (const std::string& n : t.notes)
      if (n.find("random model weights") != std::string::npos) return n;
    return std::string();
  };
  const std::string note = noted(build_report_tables(merge_reports({a, b}), ""));
  EXPECT_NE(note.find("random.json"), std::string::npos) << note;
  EXPECT_EQ(note.find("trained.json"), std::string::npos) << note;
  EXPECT_EQ(noted(build_report_tables(merge_reports({b}), "")), "");
}

// A report whose cells' machine probes spread beyond 15% says so, naming the file; one within
// it, a failed cell's probe and cells without probes (GPU runs) add nothing.
TEST(ReportMerge, AMachineThatMovedDuringTheRunIsNoted) {
  auto probed = [](json cell, double before, double after) {
    cell["machine_probe"] = {
        {"read_bytes", 16 << 20}, {"read_gbps_before", before}, {"read_gbps_after", after}};
    return cell;
  };
  auto failed = [&](const std::string& method) {
    json cell = probed(latency_cell(method, 0.1, 0.02, 16, 4000), 20, 20);
    cell["status"] = "failed";
    return cell;
  };
  // (Distinct methods: merging keeps one cell per id.)
  auto moved = make_report(
      "moved.json", {probed(latency_cell("full", 0.1, 0.02, 16, 4000), 52, 50),
                     probed(latency_cell("int4", 0.1, 0.04, 5, 1250), 44, 41), failed("int2")});
  auto steady = make_report(
      "steady.json", {probed(latency_cell("fp16", 0.1, 0.02, 16, 4000), 52, 50),
                      probed(latency_cell("fp8", 0.1, 0.04, 8, 2000), 47, 46), failed("bf16")});
  auto unprobed = make_report("gpu.json", {latency_cell("kivi-2", 0.1, 0.02, 3, 800)});
  auto notes = [](const ReportTables& t) {
    std::vector<std::string> out;
    for (const std::string& n : t.notes)
      if (n.find("machine_probe") != std::string::npos) out.push_back(n);
    return out;
  };
  const std::vector<std::string> got =
      notes(build_report_tables(merge_reports({moved, steady, unprobed}), ""));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].rfind("moved.json: the machine's read speed ranged 41.0 - 52.0 GB/s", 0), 0u)
      << got[0];
  EXPECT_TRUE(notes(build_report_tables(merge_reports({steady, unprobed}), "")).empty());
}

TEST(ReportMerge, FailedCellsAreListedWithTheirErrors) {
  const auto a = make_report(
      "a.json", {latency_cell("full", 0.1, 0.02, 16, 4000), failed_cell("int2", "needs 1.00 TiB")});
  const ReportTables t = build_report_tables(merge_reports({a}), "");
  const ResultTable& failed = table(t, "failed");
  ASSERT_EQ(failed.rows.size(), 1u);
  EXPECT_EQ(value(failed, 0, "method"), "int2");
  EXPECT_EQ(value(failed, 0, "error"), "needs 1.00 TiB");
  EXPECT_EQ(value(failed, 0, "source"), "a.json");
  EXPECT_EQ(table(t, "latency").rows.size(), 1u);  // failed cells have no metric rows
}

json accuracy_cell(const std::string& method,
                   const std::vector<std::pair<double, double>>& scores) {
  json records = json::array();
  for (size_t i = 0; i < scores.size(); ++i) {
    records.push_back({{"kind", "scored_sample"},
                       {"id", "s" + std::to_string(i)},
                       {"task", "passkey"},
                       {"score", scores[i].first},
                       {"score_full", scores[i].second}});
  }
  return {{"id", "accuracy." + method + ".0000000000000009"},
          {"suite", "accuracy"},
          {"method", {{"name", method}}},
          {"params", {{"task", "passkey"}}},
          {"status", "ok"},
          {"records", records},
          {"summary", {{"mean_score", 0.0}, {"mean_score_full", 0.0}}}};
}

TEST(ReportMerge, SamplesEveryCompressedMethodFails) {
  // Sample 0: both methods score 0 (full: 1) -> listed. Sample 1: int4 passes. Sample 2: only
  // the full cache's cell has it at 0, which does not count (it is the baseline).
  const auto a = make_report("a.json", {accuracy_cell("full", {{1, 1}, {1, 1}, {0, 0}}),
                                        accuracy_cell("int4", {{0, 1}, {1, 1}, {1, 0}}),
                                        accuracy_cell("kivi-2", {{0, 1}, {0, 1}, {1, 0}})});
  const ReportTables t = build_report_tables(merge_reports({a}), "");
  const ResultTable& every = table(t, "failed_by_every_method");
  ASSERT_EQ(every.rows.size(), 1u);
  EXPECT_EQ(value(every, 0, "id"), "s0");
  EXPECT_EQ(value(every, 0, "methods"), 2);
  EXPECT_EQ(value(every, 0, "score_full"), 1);
}

// One model's sample s0 is not another's: model a's methods all fail it, model b's int4 passes
// its own s0, and a's row is still listed (not hidden by b's pass), under a's setup.
TEST(ReportMerge, SamplesEveryMethodFailsAreKeptApartBySetup) {
  const auto a =
      make_report("a.json", {accuracy_cell("int4", {{0, 1}}), accuracy_cell("kivi-2", {{0, 1}})});
  auto b = make_report("b.json", {accuracy_cell("int4", {{1, 1}})});
  b.doc["config"]["model"]["preset"] = "tiny-qwen";
  b.doc["cells"][0]["id"] = "accuracy.int4.b";
  const ReportTables t = build_report_tables(merge_reports({a, b}), "");
  const ResultTable& every = table(t, "failed_by_every_method");
  ASSERT_EQ(every.rows.size(), 1u);
  EXPECT_EQ(value(every, 0, "id"), "s0");
  EXPECT_EQ(value(every, 0, "methods"), 2);
  EXPECT_NE(value(every, 0, "setup").get<std::string>().find("tiny-llama"), std::string::npos);
}

TEST(ReportMerge, ExplicitBaselineAndMethodsWithoutFull) {
  const auto a = make_report("a.json", {latency_cell("int8", 0.1, 0.02, 8.5, 2000),
                                        latency_cell("int4", 0.1, 0.01, 5, 1250)});
  const MergedReports merged = merge_reports({a});
  EXPECT_EQ(build_report_tables(merged, "").baseline, "");  // no full: no ratio columns
  const ReportTables t0 = build_report_tables(merged, "");
  const ResultTable& lat0 = table(t0, "latency");
  EXPECT_EQ(std::count(lat0.columns.begin(), lat0.columns.end(), "tpot_median_s/full"), 0);
  const ReportTables t = build_report_tables(merged, "int8");
  EXPECT_DOUBLE_EQ(value(table(t, "latency"), 1, "tpot_median_s/int8").get<double>(), 0.5);
  try {
    build_report_tables(merged, "kivi-2");
    FAIL() << "an absent baseline must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int4, int8"), std::string::npos) << e.what();
  }
}

// The baseline is one label: a method name shared by several labels would give a group two
// baseline rows, each read as the other's base (ratio 1 for both).
TEST(ReportMerge, TheBaselineIsOneLabel) {
  json snap = latency_cell("snapkv", 0.1, 0.02, 16, 4000);
  snap["method"]["codec"] = {{"name", "full"}};
  json snap_palu = latency_cell("snapkv", 0.1, 0.01, 8, 2000);
  snap_palu["method"]["codec"] = {{"name", "palu"}};
  snap_palu["id"] = "latency.snapkv.00000000000000bb";
  const MergedReports merged = merge_reports({make_report("a.json", {snap_palu, snap})});
  // "snapkv" is plain snapkv's label: snapkv+palu is taken against it.
  const ReportTables t = build_report_tables(merged, "snapkv");
  EXPECT_EQ(t.baseline, "snapkv");
  const ResultTable& lat = table(t, "latency");
  EXPECT_EQ(value(lat, 0, "method"), "snapkv");
  EXPECT_EQ(value(lat, 1, "method"), "snapkv+palu");
  EXPECT_DOUBLE_EQ(value(lat, 1, "tpot_median_s/snapkv").get<double>(), 0.5);
  EXPECT_EQ(build_report_tables(merged, "snapkv+palu").baseline, "snapkv+palu");

  json k2 = latency_cell("kivi", 0.1, 0.01, 3, 1000);
  k2["method"]["bits"] = 2;
  json k4 = latency_cell("kivi", 0.1, 0.02, 5, 1500);
  k4["method"]["bits"] = 4;
  k4["id"] = "latency.kivi.00000000000000cc";
  const MergedReports kivis = merge_reports({make_report("k.json", {k2, k4})});
  try {
    build_report_tables(kivis, "kivi");
    FAIL() << "a method name with two labels must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("kivi(bits=2), kivi(bits=4)"), std::string::npos)
        << e.what();
  }
  const ReportTables by_label = build_report_tables(kivis, "kivi(bits=2)");
  EXPECT_DOUBLE_EQ(value(table(by_label, "latency"), 1, "tpot_median_s/kivi(bits=2)").get<double>(),
                   2.0);
}

// A report measured on another code path is another setup: its rows are not a second
// baseline (or a second method row) beside the plain report's.
TEST(ReportMerge, ACodePathIsPartOfTheSetup) {
  const auto plain = make_report("plain.json", {latency_cell("full", 0.1, 0.02, 16, 4000),
                                                latency_cell("int4", 0.1, 0.01, 5, 1250)});
  auto kernels = make_report("kernels.json", {latency_cell("full", 0.1, 0.04, 16, 4000),
                                              latency_cell("int4", 0.1, 0.01, 5, 1250)});
  for (json& c : kernels.doc["cells"]) c["id"] = c["id"].get<std::string>() + "k";
  kernels.doc["environment"] = {{"overrides",
                                 {{"KVBENCH_PAGED_PATH", "kernels"},
                                  {"KVBENCH_DECODE_LOOP", "v3"}}}};  // a GPU-only one: not here
  const json setup = cell_setup(kernels.doc, kernels.doc["cells"][0]);
  EXPECT_EQ(setup["code_path"], json({{"KVBENCH_PAGED_PATH", "kernels"}}));
  EXPECT_FALSE(cell_setup(plain.doc, plain.doc["cells"][0]).contains("code_path"));
  // Under paged attention on the CPU the variable picks the GPU path's code (ids: paged_path).
  json paged = kernels.doc;
  paged["config"]["attention"] = "paged";
  EXPECT_EQ(cell_setup(paged, paged["cells"][0])["code_path"],
            json({{"KVBENCH_PAGED_PATH", "kernels"}}));
  paged["environment"]["overrides"] = json::object();
  EXPECT_FALSE(cell_setup(paged, paged["cells"][0]).contains("code_path"));

  const ReportTables t = build_report_tables(merge_reports({plain, kernels}), "");
  const ResultTable& lat = table(t, "latency");
  ASSERT_EQ(lat.rows.size(), 4u);
  EXPECT_DOUBLE_EQ(value(lat, 1, "tpot_median_s/full").get<double>(), 0.5);   // plain
  EXPECT_DOUBLE_EQ(value(lat, 3, "tpot_median_s/full").get<double>(), 0.25);  // kernels
  EXPECT_NE(value(lat, 2, "setup").get<std::string>().find("kernels"), std::string::npos);
}

TEST(ReportMerge, MethodsWithDifferentParametersGetDistinctLabels) {
  json sym = latency_cell("int4", 0.1, 0.01, 4.5, 1100);
  sym["method"]["symmetric"] = true;
  sym["id"] = "latency.int4.00000000000000aa";
  json asym = latency_cell("int4", 0.1, 0.01, 5, 1250);
  asym["method"]["symmetric"] = false;
  const ReportTables t =
      build_report_tables(merge_reports({make_report("a.json", {asym, sym})}), "");
  const ResultTable& lat = table(t, "latency");
  EXPECT_EQ(value(lat, 0, "method"), "int4(symmetric=false)");
  EXPECT_EQ(value(lat, 1, "method"), "int4(symmetric=true)");
}

// A retention method over a compressing codec carries its codec's name, alone or beside
// others of its name; one over the full cache does not.
TEST(ReportMerge, RetentionMethodsAreLabelledWithTheirCodec) {
  const json snap_full = {{"name", "snapkv"}, {"budget", 64}, {"codec", {{"name", "full"}}}};
  const json snap_palu = {
      {"name", "snapkv"}, {"budget", 64}, {"codec", {{"name", "palu"}, {"rank", 32}}}};
  const json pyr_palu = {{"name", "pyramidkv"}, {"codec", {{"name", "palu"}, {"rank", 32}}}};
  const json snap_palu64 = {
      {"name", "snapkv"}, {"budget", 64}, {"codec", {{"name", "palu"}, {"rank", 64}}}};
  const auto labels = method_labels({snap_full, snap_palu, pyr_palu, snap_palu64});
  EXPECT_EQ(labels.at(snap_full.dump()), "snapkv");
  EXPECT_EQ(labels.at(pyr_palu.dump()), "pyramidkv+palu");
  EXPECT_EQ(labels.at(snap_palu.dump()), "snapkv+palu(codec.rank=32)");
  EXPECT_EQ(labels.at(snap_palu64.dump()), "snapkv+palu(codec.rank=64)");
}

TEST(ReportMerge, ParetoSaysWhatItCouldNotCompare) {
  // Bits and speed only: the front holds, with a note that quality was not measured.
  ReportTables t = build_report_tables(
      merge_reports({make_report("a.json", {throughput_cell("full", {100, 200}, 16),
                                            throughput_cell("int2", {150, 300}, 3)})}),
      "");
  EXPECT_EQ(value(table(t, "pareto"), 1, "on_front"), true);
  bool noted = false;
  for (const std::string& note : t.notes)
    noted |= note.find("no quality dimension") != std::string::npos;
  EXPECT_TRUE(noted);
  // No dimension in common: neither on nor off the front.
  t = build_report_tables(merge_reports({make_report("a.json", {throughput_cell("full", {100}, 16),
                                                                fidelity_cell("int4", 0.01)})}),
                          "");
  const ResultTable& p = table(t, "pareto");
  ASSERT_EQ(p.rows.size(), 2u);
  EXPECT_TRUE(value(p, 0, "on_front").is_null());
  EXPECT_TRUE(value(p, 1, "on_front").is_null());
}

TEST(ReportMerge, ParetoFrontOfBitsDecodeSpeedAndKl) {
  // full: 16 bits, fast-ish, exact; int4: fewer bits, faster, small KL; int2: fewest bits,
  // slowest, large KL; fp8x: as many bits as full, slower and worse: dominated by full.
  std::vector<json> cells;
  const std::vector<std::tuple<std::string, double, double, double>> methods = {
      {"full", 16, 100, 0}, {"int4", 5, 120, 0.01}, {"int2", 3, 90, 0.2}, {"fp8x", 16, 90, 0.05}};
  for (const auto& [name, bits, decode, kl] : methods) {
    cells.push_back(throughput_cell(name, {decode, 2 * decode}, bits));
    cells.push_back(fidelity_cell(name, kl));
  }
  const ReportTables t = build_report_tables(merge_reports({make_report("a.json", cells)}), "");
  const ResultTable& p = table(t, "pareto");
  ASSERT_EQ(p.rows.size(), 4u);
  EXPECT_EQ(value(p, 0, "on_front"), true);
  EXPECT_EQ(value(p, 1, "on_front"), true);
  EXPECT_EQ(value(p, 2, "on_front"), true);
  EXPECT_EQ(value(p, 3, "method"), "fp8x");
  EXPECT_EQ(value(p, 3, "on_front"), false);
  EXPECT_EQ(value(p, 0, "dimensions"), "bits_per_value, decode_tok_s, kl_mean");
  for (const std::string& note : t.notes)
    EXPECT_EQ(note.find("no quality dimension"), std::string::npos) << note;
  // Geometric mean over the shared points: sqrt(120 * 240).
  EXPECT_NEAR(value(p, 1, "decode_tok_s").get<double>(), std::sqrt(120.0 * 240.0), 1e-9);
  // bits_per_value is the timing suites' (a fidelity summary's kv_memory holds one window's
  // tokens): a fidelity cell's bits leave it unchanged.
  json fidelity = fidelity_cell("int4", 0.01);
  fidelity["summary"]["kv_memory"] = {{"bits_per_value", 9.0}};
  cells[3] = fidelity;
  const ReportTables with_bits =
      build_report_tables(merge_reports({make_report("a.json", cells)}), "");
  EXPECT_DOUBLE_EQ(value(table(with_bits, "pareto"), 1, "bits_per_value").get<double>(), 5.0);

  EXPECT_EQ(pareto_front({{1, 1}, {2, 2}, {3, 0}}), (std::vector<bool>{false, true, true}));
  EXPECT_EQ(pareto_front({{1, 1}, {1, 1}}), (std::vector<bool>{true, true}));  // ties stay
}

TEST(ReportMerge, RejectsOtherSchemaVersionsNamingTheFile) {
  json doc = make_report("x.json", {}).doc;
  doc["schema_version"] = 1;
  try {
    check_report_document(doc, "old.json");
    FAIL();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("old.json"), std::string::npos);
    EXPECT_NE(what.find("schema_version 1"), std::string::npos);
  }
  EXPECT_THROW(check_report_document(json{{"schema", "other"}}, "o.json"), Error);
  EXPECT_THROW(load_report("/nonexistent/report.json"), Error);
}

// A hand-edited `partial` that is not the object a stopped run writes is an input error naming
// the file, not a JSON library's message.
TEST(ReportMerge, RejectsAMalformedPartialNamingTheFile) {
  json doc = make_report("x.json", {}).doc;
  doc["partial"] = {{"cells_done", 1}, {"cells_planned", 3}};
  EXPECT_NO_THROW(check_report_document(doc, "p.json"));
  for (const json& bad : {json(true), json{{"cells_done", "1"}, {"cells_planned", 3}}}) {
    doc["partial"] = bad;
    try {
      check_report_document(doc, "p.json");
      FAIL() << bad.dump();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                "p.json: partial: expected an object with integer cells_done and cells_planned");
    }
  }
}

// Fields report and compare iterate over, of the wrong type (a hand-edited or cut report), are
// named with their cell, not read as empty tables.
TEST(ReportMerge, RejectsCellFieldsOfTheWrongTypeNamingThem) {
  const json good = make_report("x.json", {latency_cell("full", 0.1, 0.02, 16, 4000)}).doc;
  EXPECT_NO_THROW(check_report_document(good, "r.json"));
  auto error = [&](const std::function<void(json&)>& edit) {
    json doc = good;
    edit(doc);
    try {
      check_report_document(doc, "r.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error([](json& d) { d["cells"][0]["records"] = nullptr; }),
            "r.json: cells[0].records: expected array, got null");
  EXPECT_EQ(error([](json& d) { d["cells"][0]["summary"] = json::array(); }),
            "r.json: cells[0].summary: expected object, got array");
  EXPECT_EQ(error([](json& d) { d["cells"][0]["records"][0]["samples_s"] = "x"; }),
            "r.json: cells[0].records[0].samples_s: expected an array of numbers, got string");
  EXPECT_EQ(error([](json& d) { d["cells"][0]["records"][0]["samples_s"][0] = "1"; }),
            "r.json: cells[0].records[0].samples_s: expected an array of numbers, holds string");
  EXPECT_EQ(error([](json& d) { d["environment"] = 5; }),
            "r.json: environment: expected an object, got number");
}

TEST(ReportMerge, RendersMarkdownCsvAndJson) {
  const auto a = make_report("a.json", {latency_cell("full", 0.1, 0.02, 16, 4000),
                                        latency_cell("int4", 0.1, 0.01, 5, 1250),
                                        failed_cell("int2", "boom, \"quoted\"")});
  const MergedReports merged = merge_reports({a});
  const ReportTables t = build_report_tables(merged, "");
  std::ostringstream md, csv;
  render_markdown(md, t, merged.sources);
  EXPECT_NE(md.str().find("## latency"), std::string::npos);
  EXPECT_NE(md.str().find("| method |"), std::string::npos);
  EXPECT_NE(md.str().find("| int4 |"), std::string::npos);
  EXPECT_NE(md.str().find("|---|"), std::string::npos);
  render_csv(csv, t);
  std::istringstream lines(csv.str());
  std::string header;
  std::getline(lines, header);
  EXPECT_EQ(header.rfind("table,method,", 0), 0u) << header;
  EXPECT_NE(csv.str().find("\nlatency,int4,"), std::string::npos);
  EXPECT_NE(csv.str().find("\"boom, \"\"quoted\"\"\""), std::string::npos);
  const json j = render_json(t, merged.sources, merged.warnings);
  EXPECT_EQ(j["baseline"], "full");
  EXPECT_EQ(j["tables"][0]["name"], "latency");
  EXPECT_DOUBLE_EQ(j["tables"][0]["rows"][1]["tpot_median_s/full"].get<double>(), 0.5);
  EXPECT_EQ(format_value(json(0.0123456)), "0.01235");
  EXPECT_EQ(format_value(json(4096.0)), "4096");
  // A value with newlines (a prompt_text parameter, a task name) stays on its row.
  ReportTables lines_in_values;
  lines_in_values.tables.push_back({"t", "title", {"prompt_text"}, {{json("a|b\nc\r\nd")}}});
  std::ostringstream one_row;
  render_markdown(one_row, lines_in_values, {});
  EXPECT_NE(one_row.str().find("| a\\|b<br>c<br>d |"), std::string::npos) << one_row.str();
}

// A varying parameter named like one of the table's metrics (output_length's `samples`, the
// length_shift table's sample count per task) gets its own column name: CSV and JSON key rows
// by name, so one of the two would be lost.
TEST(ReportMerge, AParameterNamedLikeAMetricKeepsItsOwnColumn) {
  auto cell = [](int64_t samples) {
    return json{{"id", "output_length.full.000000000000000" + std::to_string(samples % 10)},
                {"suite", "output_length"},
                {"method", {{"name", "full"}}},
                {"params", {{"samples", samples}}},
                {"status", "ok"},
                {"records", json::array()},
                {"summary",
                 {{"tasks", {{{"task", "qa"}, {"samples", samples - 1}, {"length_ratio", 1.0}}}}}}};
  };
  const MergedReports merged = merge_reports({make_report("a.json", {cell(8), cell(9)})});
  const ReportTables t = build_report_tables(merged, "");
  const auto table = std::find_if(t.tables.begin(), t.tables.end(),
                                  [](const ResultTable& r) { return r.name == "length_shift"; });
  ASSERT_NE(table, t.tables.end());
  const std::set<std::string> names(table->columns.begin(), table->columns.end());
  EXPECT_EQ(names.size(), table->columns.size());  // no name twice
  EXPECT_TRUE(names.count("param.samples"));
  EXPECT_TRUE(names.count("samples"));
  const json j = render_json(t, merged.sources, merged.warnings);
  for (const json& table_json : j["tables"]) {
    if (table_json["name"] != "length_shift") continue;
    EXPECT_EQ(table_json["rows"][0]["param.samples"], 8);
    EXPECT_EQ(table_json["rows"][0]["samples"], 7);
  }
}

// The output_length table carries the paired p-value and the first seed control's ratio (a path
// through an array); a report from before seed controls leaves that column empty.
TEST(ReportMerge, OutputLengthRowsCarryTheSeedFloor) {
  auto cell = [](const std::string& name, bool seeds) {
    json summary = {{"mean_length", 40.0}, {"length_ratio", 1.25}, {"wilcoxon_p_value", 0.01}};
    if (seeds)
      summary["seed_controls"] = {{{"seed_offset", 1}, {"length_ratio", 1.03}},
                                  {{"seed_offset", 2}, {"length_ratio", 0.97}}};
    return json{{"id", "output_length." + name + ".0000000000000000"},
                {"suite", "output_length"},
                {"method", {{"name", name}}},
                {"params", json::object()},
                {"status", "ok"},
                {"records", json::array()},
                {"summary", summary}};
  };
  const MergedReports merged =
      merge_reports({make_report("a.json", {cell("full", true), cell("int4", false)})});
  const ReportTables t = build_report_tables(merged, "");
  const auto table = std::find_if(t.tables.begin(), t.tables.end(),
                                  [](const ResultTable& r) { return r.name == "output_length"; });
  ASSERT_NE(table, t.tables.end());
  const auto col = [&](const std::string& name) {
    return std::find(table->columns.begin(), table->columns.end(), name) - table->columns.begin();
  };
  const size_t p = col("wilcoxon_p_value"), floor = col("seed_control_length_ratio");
  ASSERT_LT(floor, table->columns.size());
  ASSERT_EQ(table->rows.size(), 2u);
  ASSERT_EQ(table->columns[0], "method");
  std::set<std::string> seen;
  for (const auto& row : table->rows) {
    EXPECT_EQ(row[p], 0.01);
    seen.insert(row[0].get<std::string>());
    if (row[0] == "full") EXPECT_EQ(row[floor], 1.03);
    if (row[0] == "int4") EXPECT_TRUE(row[floor].is_null());
  }
  EXPECT_EQ(seen, (std::set<std::string>{"full", "int4"}));
}

// A cell marked ok without a summary (hand-made, or cut short) is read as one without values,
// not by reading past the end of a map.
TEST(ReportMerge, AnOkCellWithoutASummaryHasNoValues) {
  json cell = latency_cell("full", 0.1, 0.02, 16, 4000);
  cell.erase("summary");
  const MergedReports merged = merge_reports({make_report("a.json", {cell})});
  const ReportTables t = build_report_tables(merged, "");
  EXPECT_FALSE(t.tables.empty());
}

}  // namespace
}  // namespace kvbench
