// Cells: stable ids, expansion order, and a failing cell that does not stop the others.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "kvbench/core/error.h"
#include "kvbench/core/machine_probe.h"
#include "kvbench/model/presets.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/runner.h"

namespace kvbench {
namespace {

using nlohmann::json;

RunSpec spec_with_suites(const json& suites) {
  return parse_run_spec(json{{"suites", suites}, {"threads", 1}}, "t");
}

TEST(Cells, IdsAreStableAndContentDerived) {
  RunSpec a = spec_with_suites(json::parse(R"([{"name": "kernels", "repeats": 3}])"));
  RunSpec b = spec_with_suites(json::parse(R"([{"repeats": 3, "name": "kernels"}])"));
  RunSpec c = spec_with_suites(json::parse(R"([{"name": "kernels", "repeats": 4}])"));
  auto ca = expand_cells(a), cb = expand_cells(b), cc = expand_cells(c);
  ASSERT_EQ(ca.size(), 1u);
  EXPECT_EQ(ca[0].id, cb[0].id);  // key order does not matter
  EXPECT_NE(ca[0].id, cc[0].id);  // any parameter change does
  EXPECT_EQ(ca[0].id.rfind("kernels.full.", 0), 0u);
  EXPECT_EQ(ca[0].id.size(), std::string("kernels.full.").size() + 16);
  // Explicit defaults resolve to the same cell as omitted ones.
  RunSpec d = spec_with_suites(json::parse(R"([{"name": "kernels", "repeats": 3, "warmup": 3}])"));
  EXPECT_EQ(expand_cells(d)[0].id, ca[0].id);
}

// What the kernels suite cannot plan with a method is a config error naming the pair, before
// any cell runs; the same pair on cuda is left to the GPU plan.
TEST(Cells, KernelsCellsTheSuiteCannotPlanAreConfigErrors) {
  auto spec_with = [](const json& method, const json& suite) {
    return parse_run_spec(json{{"suites", {suite}}, {"methods", {method}}, {"threads", 1}}, "t");
  };
  const json kernels = {{"name", "kernels"}, {"head_dim", 64}};
  try {
    expand_cells(spec_with({{"name", "kvproj"}}, kernels));
    FAIL() << "kvproj in the kernels suite was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key_path(), "suites[0] x methods[0]");
    EXPECT_NE(std::string(e.what()).find("fitted to a model"), std::string::npos) << e.what();
  }
  // int8 at group 128 does not divide head_dim 64.
  const RunSpec wide = spec_with({{"name", "int8"}, {"group", 128}}, kernels);
  try {
    expand_cells(wide);
    FAIL() << "int8 group 128 at head_dim 64 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.key_path(), "suites[0] x methods[0]");
  }
  EXPECT_EQ(expand_cells(spec_with({{"name", "int8"}, {"group", 64}}, kernels)).size(), 1u);
}

TEST(Cells, ShardsAreDisjointAndComplete) {
  json suites = json::array();
  for (int r = 1; r <= 12; ++r) suites.push_back({{"name", "kernels"}, {"repeats", r}});
  json cfg = {
      {"suites", suites},
      {"threads", 1},
      {"methods", json::parse(R"([{"name": "full"}, {"name": "int8"}, {"name": "kivi-4"}])")}};
  const std::vector<Cell> cells = expand_cells(parse_run_spec(cfg, "t"));
  ASSERT_EQ(cells.size(), 36u);
  for (int n : {1, 2, 3, 7}) {
    std::map<std::string, int> seen;
    for (int i = 0; i < n; ++i) {
      std::vector<Cell> part =
          select_shard(cells, parse_shard(std::to_string(i) + "/" + std::to_string(n)));
      for (const auto& c : part) seen[c.id]++;
      // Run order is kept within a shard.
      for (size_t k = 1; k < part.size(); ++k) {
        auto pos = [&](const Cell& c) {
          return std::find_if(cells.begin(), cells.end(),
                              [&](const Cell& x) { return x.id == c.id; });
        };
        EXPECT_LT(pos(part[k - 1]), pos(part[k]));
      }
    }
    EXPECT_EQ(seen.size(), cells.size()) << n << " shards";          // complete
    for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id;  // disjoint
  }
}

// `threads: "auto"` resolves to this machine's cores, which enter the cells' ids (threads change
// CPU timings); a job array's tasks on nodes with other core counts must still split the cells
// alike, so shards hash the config as written. With explicit threads the shard hash is the id's.
TEST(Cells, ShardsOfAutoThreadsDoNotDependOnTheCores) {
  json cfg = {
      {"suites", json::array({{{"name", "kernels"}}, {{"name", "kernels"}, {"repeats", 3}}})},
      {"threads", "auto"},
      {"methods", json::parse(R"([{"name": "full"}, {"name": "int8"}])")}};
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  if (CPU_COUNT(&all) < 2) GTEST_SKIP() << "one core: the core count cannot change";
  const std::vector<Cell> wide = expand_cells(parse_run_spec(cfg, "t"));
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &all)) {
      CPU_SET(i, &one);
      break;
    }
  ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
  std::vector<Cell> narrow;
  try {
    narrow = expand_cells(parse_run_spec(cfg, "t"));
  } catch (...) {
    sched_setaffinity(0, sizeof(all), &all);
    throw;
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(all), &all), 0);
  ASSERT_EQ(wide.size(), narrow.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    EXPECT_NE(wide[i].id, narrow[i].id);  // 1 thread measures other timings than 2
    EXPECT_EQ(wide[i].shard_hash, narrow[i].shard_hash);
  }
  cfg["threads"] = 1;
  for (const Cell& c : expand_cells(parse_run_spec(cfg, "t")))
    EXPECT_EQ(c.shard_hash, fnv1a64(c.id));
}

TEST(Cells, ShardSyntaxErrorsNameTheOption) {
  EXPECT_EQ(parse_shard("2/5").index, 2);
  EXPECT_EQ(parse_shard("2/5").count, 5);
  for (const char* bad :
       {"5/5", "-1/3", "1", "a/b", "1/0", "1/2x", "", " 1/2", "+1/2", "-0/2", "1/ 2", "/2", "1/"}) {
    try {
      parse_shard(bad);
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("--shard"), std::string::npos) << e.what();
    }
  }
}

TEST(Cells, IdsFollowTheContentOfModelAndDataFiles) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "kvbench_cell_inputs";
  std::filesystem::create_directories(dir / "model");
  auto write = [](const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p) << text;
  };
  write(dir / "data.jsonl", "{\"a\": 1}\n");
  write(dir / "model" / "config.json", "{}");
  write(dir / "model" / "model.safetensors", std::string(1000, 'x'));
  auto id_of = [&](const std::string& suite) {
    json cfg = {
        {"threads", 1},
        {"model", {{"path", (dir / "model").string()}}},
        {"suites",
         json::array({suite == "accuracy"
                          ? json{{"name", "accuracy"}, {"data_file", (dir / "data.jsonl").string()}}
                          : json{{"name", suite}}})}};
    return expand_cells(parse_run_spec(cfg, "t"))[0].id;
  };
  const std::string acc = id_of("accuracy"), lat = id_of("latency"), ker = id_of("kernels");
  EXPECT_EQ(id_of("accuracy"), acc);  // same content, same id
  write(dir / "data.jsonl", "{\"a\": 2}\n");
  EXPECT_NE(id_of("accuracy"), acc);  // a changed data set never reuses a result
  write(dir / "model" / "model.safetensors", std::string(999, 'x') + "y");
  EXPECT_NE(id_of("latency"), lat);  // nor do changed weights
  EXPECT_EQ(id_of("kernels"), ker);  // a suite without a model does not care
}

// A preset's cells keep their ids (and seeds) once the preset is written on first use: the
// preset and seed name its weights, so --shard splits a run the same before and after.
TEST(Cells, PresetIdsDoNotChangeOnceThePresetIsWritten) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "kvbench_preset_ids" / "tiny-llama";
  std::filesystem::remove_all(dir);
  const json cfg = {{"threads", 1},
                    {"model", {{"preset", "tiny-llama"}, {"path", dir.string()}}},
                    {"suites", json::parse(R"([{"name": "latency"}])")},
                    {"methods", json::parse(R"([{"name": "full"}, {"name": "int8"}])")}};
  const std::vector<Cell> before = expand_cells(parse_run_spec(cfg, "t"));
  write_preset_checkpoint(find_model_preset("tiny-llama"), dir.string(), 0);
  const std::vector<Cell> after = expand_cells(parse_run_spec(cfg, "t"));
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(before[i].id, after[i].id);
    EXPECT_EQ(before[i].seed, after[i].seed);
  }
}

TEST(Cells, SeedDependsOnRunSeedAndCell) {
  json cfg = {{"suites", json::parse(R"([{"name": "kernels"}])")}, {"seed", 1}};
  auto s1 = expand_cells(parse_run_spec(cfg, "t"))[0].seed;
  cfg["seed"] = 2;
  auto s2 = expand_cells(parse_run_spec(cfg, "t"))[0].seed;
  EXPECT_NE(s1, s2);
}

TEST(Cells, SuitesOuterMethodsInnerAndDuplicatesRejected) {
  RunSpec s = spec_with_suites(
      json::parse(R"([{"name": "kernels", "repeats": 2}, {"name": "kernels", "repeats": 3}])"));
  auto cells = expand_cells(s);
  ASSERT_EQ(cells.size(), 2u);
  EXPECT_EQ(cells[0].suite_index, 0u);
  EXPECT_EQ(cells[1].suite_index, 1u);
  RunSpec dup =
      spec_with_suites(json::parse(R"([{"name": "kernels"}, {"name": "kernels", "repeats": 20}])"));
  EXPECT_THROW(expand_cells(dup), ConfigError);
}

// A suite that fails when its "repeats" parameter is 13, and otherwise records it.
class FakeSuite : public Suite {
 public:
  uint64_t estimate_bytes(const EstimateContext&) const override { return 0; }
  CellOutput run(const CellContext& ctx) override {
    if (ctx.params["repeats"] == 13) throw Error("unlucky cell\nsecond line");
    if (ctx.params["repeats"] == 14) throw std::runtime_error("not a kvbench error");
    CellOutput out;
    out.records.push_back({{"kind", "fake"}, {"samples_s", {1.0}}});
    out.summary["repeats"] = ctx.params["repeats"];
    return out;
  }
  Table summary_table(const CellOutput&) const override { return {}; }
};

TEST(Runner, FailingCellIsRecordedAndOthersGoOn) {
  RunSpec s = spec_with_suites(json::parse(
      R"([{"name": "kernels", "repeats": 1}, {"name": "kernels", "repeats": 13},
          {"name": "kernels", "repeats": 14}, {"name": "kernels", "repeats": 2}])"));
  Runner runner([](const std::string&) { return std::make_unique<FakeSuite>(); });
  NullProgress progress;
  Environment env;
  ModelProvider model(s.model);
  auto results = runner.run(s, expand_cells(s), env, progress, model);
  ASSERT_EQ(results.size(), 4u);
  EXPECT_TRUE(results[0].ok);
  EXPECT_FALSE(results[1].ok);
  EXPECT_EQ(results[1].error, "unlucky cell");  // one line
  EXPECT_FALSE(results[2].ok);
  EXPECT_EQ(results[2].error, "not a kvbench error");
  EXPECT_TRUE(results[3].ok);
  EXPECT_EQ(results[3].output.summary["repeats"], 2);
  EXPECT_EQ(count_failed(results), 2u);
  for (const auto& r : results) {
    EXPECT_FALSE(r.started.empty());
    EXPECT_GE(r.duration_s, 0.0);
    // A CPU run reads the machine's speed at both ends of every cell, failed ones included.
    EXPECT_GT(r.probe_before_gbps, 0.0);
    EXPECT_GT(r.probe_after_gbps, 0.0);
  }
}

// A cell whose probes differ by more than 15% warns (an ok cell; a failed one has its error);
// within it, none; a run on "cuda" probes nothing (a GPU's timings do not ride on the host's
// memory).
TEST(Runner, ACellDuringWhichTheMachineMovedWarns) {
  RunSpec s = spec_with_suites(json::parse(
      R"([{"name": "kernels", "repeats": 1}, {"name": "kernels", "repeats": 2},
          {"name": "kernels", "repeats": 13}])"));
  // Rates in call order: cell 1 50 -> 40, cell 2 40 -> 38, cell 3 (fails) 50 -> 30.
  std::vector<double> rates = {50, 40, 40, 38, 50, 30};
  size_t next = 0;
  Runner runner([](const std::string&) { return std::make_unique<FakeSuite>(); },
                [&] { return rates.at(next++); });
  NullProgress progress;
  Environment env;
  ModelProvider model(s.model);
  auto warned = [](const CellResult& r) {
    return std::any_of(r.output.warnings.begin(), r.output.warnings.end(),
                       [](const auto& w) { return w.find("moved from") != std::string::npos; });
  };
  auto results = runner.run(s, expand_cells(s), env, progress, model);
  ASSERT_EQ(next, 6u);
  EXPECT_EQ(results[0].probe_before_gbps, 50);
  EXPECT_EQ(results[0].probe_after_gbps, 40);
  EXPECT_TRUE(warned(results[0]));
  EXPECT_FALSE(warned(results[1]));
  EXPECT_FALSE(results[2].ok);
  EXPECT_FALSE(warned(results[2]));
  // A probe that throws leaves the cells unprobed, with a warning; the run goes on.
  Runner broken([](const std::string&) { return std::make_unique<FakeSuite>(); },
                []() -> double { throw Error("cannot map"); });
  results = broken.run(s, expand_cells(s), env, progress, model);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_TRUE(results[0].ok);
  EXPECT_EQ(results[0].probe_before_gbps, 0);
  ASSERT_EQ(results[0].output.warnings.size(), 1u);
  EXPECT_EQ(results[0].output.warnings[0], "machine probe failed (cannot map): not probed");
  s.device = "cuda";
  next = 0;
  results = runner.run(s, expand_cells(s), env, progress, model);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(next, 0u);
  for (const CellResult& r : results) {
    EXPECT_EQ(r.probe_before_gbps, 0);
    EXPECT_EQ(r.probe_after_gbps, 0);
    EXPECT_FALSE(warned(r));
  }
}

// The probe itself: a positive, finite rate; the spread of two rates; a warning only beyond the
// tolerance (15%), either way round.
TEST(MachineProbe, ReadsARateAndWarnsOnlyBeyondTheTolerance) {
  const double gbps = probe_read_gbps(0.005);
  EXPECT_GT(gbps, 0.0);
  EXPECT_TRUE(std::isfinite(gbps));
  EXPECT_DOUBLE_EQ(probe_spread(50, 40), 0.25);
  EXPECT_DOUBLE_EQ(probe_spread(40, 50), 0.25);
  EXPECT_DOUBLE_EQ(probe_spread(0, 50), 0.0);
  EXPECT_TRUE(probe_drift_warning(50, 44).empty());  // 13.6%
  EXPECT_TRUE(probe_drift_warning(44, 50).empty());
  const std::string w = probe_drift_warning(50, 42);  // 19%
  EXPECT_NE(w.find("moved from 50.0 to 42.0 GB/s during this cell"), std::string::npos) << w;
  EXPECT_FALSE(probe_drift_warning(42, 50).empty());
  EXPECT_TRUE(probe_drift_warning(0, 50).empty());  // not probed
}

}  // namespace
}  // namespace kvbench
