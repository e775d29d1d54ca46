#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "kvbench/core/error.h"
#include "kvbench/report/atomic_file.h"
#include "kvbench/report/report.h"

namespace kvbench {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kvbench_test_" + name);
  fs::remove_all(dir);
  return dir;
}

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t count_entries(const fs::path& dir) {
  size_t n = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++n;
  return n;
}

TEST(AtomicFile, WritesCreatesDirectoriesAndReplaces) {
  fs::path dir = fresh_dir("atomic");
  fs::path file = dir / "a" / "b" / "report.json";
  write_file_atomically(file, "first");
  EXPECT_EQ(read(file), "first");
  write_file_atomically(file, "second");
  EXPECT_EQ(read(file), "second");
  EXPECT_EQ(count_entries(file.parent_path()), 1u);  // no temporary left behind
  fs::remove_all(dir);
}

TEST(AtomicFile, FailureKeepsOldContentAndLeavesNoTemporary) {
  fs::path dir = fresh_dir("atomic_fail");
  fs::create_directories(dir);
  fs::path target = dir / "taken";
  fs::create_directories(target / "not_empty");  // rename over a non-empty directory fails
  EXPECT_THROW(write_file_atomically(target, "x"), Error);
  EXPECT_TRUE(fs::is_directory(target));
  EXPECT_EQ(count_entries(dir), 1u);
  fs::path blocked = dir / "file_as_parent";
  std::ofstream(blocked) << "I am a file";
  EXPECT_THROW(write_file_atomically(blocked / "report.json", "x"), Error);
  fs::remove_all(dir);
}

TEST(Report, CarriesIdentityEnvironmentConfigAndCells) {
  RunSpec spec =
      parse_run_spec(nlohmann::json::parse(R"({"suites": [{"name": "kernels"}]})"), "my run/1");
  CellResult ok;
  ok.cell = expand_cells(spec)[0];
  ok.ok = true;
  ok.output.records.push_back({{"kind", "fake"}, {"samples_s", {0.5, 0.25}}});
  CellResult failed = ok;
  failed.ok = false;
  failed.error = "boom";
  Environment env = capture_environment();
  RunInfo info{"2026-11-23T10:00:00.000Z", "2026-11-23T10:00:01.000Z", "kvbench run", "x.json",
               nlohmann::json::object()};
  auto report = build_report(spec, env, {ok, failed}, info);
  EXPECT_EQ(report["schema"], kReportSchemaId);
  EXPECT_EQ(report["schema_version"], kReportSchemaVersion);
  EXPECT_FALSE(report["kvbench"]["git_revision"].get<std::string>().empty());
  EXPECT_EQ(report["environment"]["threads"], env.threads);
  EXPECT_EQ(report["environment"]["blas"]["name"], env.blas.name);
  EXPECT_EQ(report["config"], spec.resolved);
  EXPECT_EQ(report["cells"][0]["status"], "ok");
  EXPECT_FALSE(report["cells"][0].contains("error"));
  EXPECT_EQ(report["cells"][0]["records"][0]["samples_s"][1], 0.25);
  EXPECT_EQ(report["cells"][1]["status"], "failed");
  EXPECT_EQ(report["cells"][1]["error"], "boom");
  EXPECT_EQ(report["totals"]["failed"], 1);
  // The run name is made safe for a file name.
  EXPECT_EQ(report_path(spec, "20261123T100000Z").filename(), "my_run_1-20261123T100000Z.json");
}

}  // namespace
}  // namespace kvbench
