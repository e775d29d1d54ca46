#include <gtest/gtest.h>
#include <unistd.h>

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

// The temporary is a name of its own, never one another process may hold: a file already at
// the old "<path>.tmp.<pid>" name (another container's writer, whose pids repeat) is neither
// truncated nor written through.
TEST(AtomicFile, TheTemporaryIsNeverAnotherWritersFile) {
  fs::path dir = fresh_dir("atomic_tmp");
  fs::create_directories(dir);
  const fs::path other = dir / "other.json",
                 taken = dir / ("r.json.tmp." + std::to_string(::getpid()));
  std::ofstream(other) << "another writer's report";
  fs::create_hard_link(other, taken);
  write_file_atomically(dir / "r.json", "mine");
  EXPECT_EQ(read(dir / "r.json"), "mine");
  EXPECT_EQ(read(other), "another writer's report");
  EXPECT_EQ(read(taken), "another writer's report");
  EXPECT_EQ(count_entries(dir), 3u);  // r.json, other.json and its link: no temporary left
  fs::remove_all(dir);
}

// The flag a stop signal's message reads: set when the file is in place, never for a write
// that placed nothing (an exclusive name already taken).
TEST(AtomicFile, PlacedFlagIsSetOnlyWhenTheFileIsInPlace) {
  fs::path dir = fresh_dir("atomic_placed");
  std::atomic<bool> placed{false};
  EXPECT_TRUE(write_file_atomically(dir / "r.json", "one", /*exclusive=*/true, &placed));
  EXPECT_TRUE(placed.load());
  placed = false;
  EXPECT_FALSE(write_file_atomically(dir / "r.json", "two", /*exclusive=*/true, &placed));
  EXPECT_FALSE(placed.load());
  EXPECT_EQ(read(dir / "r.json"), "one");
  EXPECT_FALSE(unfinished_atomic_write_placed());  // no write in progress
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
  // The run name is made safe for a file name, and short enough for one.
  EXPECT_EQ(report_path(spec, "20261123T100000Z").filename(), "my_run_1-20261123T100000Z.json");
  RunSpec long_name = spec;
  long_name.name = std::string(5000, 'a');
  EXPECT_EQ(report_path(long_name, "20261123T100000Z").filename().string(),
            std::string(120, 'a') + "-20261123T100000Z.json");
  long_name.name = std::string(300, 'b') + "-g12";  // a grid run's: its end is kept
  EXPECT_EQ(report_path(long_name, "20261123T100000Z").filename().string(),
            std::string(116, 'b') + "-g12-20261123T100000Z.json");
  RunSpec dotted = spec;
  dotted.name = "../x";  // neither a path nor a hidden file
  EXPECT_EQ(report_path(dotted, "20261123T100000Z").filename().string(),
            "_._x-20261123T100000Z.json");
}

// A cell's error may quote a file's bytes (a corrupt header), and strings from files or --set
// may not be UTF-8: the report is still written, with those bytes shown or replaced.
TEST(Report, BytesThatAreNotUtf8DoNotCostTheReport) {
  RunSpec spec = parse_run_spec(nlohmann::json::parse(R"({"suites": [{"name": "kernels"}]})"), "u");
  CellResult failed;
  failed.cell = expand_cells(spec)[0];
  failed.ok = false;
  failed.error = "header is not valid JSON; last read: '\xff'";
  failed.output.records.push_back({{"text", "caf\xe9"}});
  RunInfo info{"2026-11-23T10:00:00.000Z", "2026-11-23T10:00:01.000Z", "kvbench run", "x.json",
               nlohmann::json::object()};
  const nlohmann::json report = build_report(spec, capture_environment(), {failed}, info);
  EXPECT_EQ(report["cells"][0]["error"], "header is not valid JSON; last read: '\\xff'");
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / "kvbench_utf8_report.json";
  write_report(report, path);
  std::ifstream in(path);
  const nlohmann::json back = nlohmann::json::parse(in);
  EXPECT_EQ(back["cells"][0]["records"][0]["text"], "caf\xef\xbf\xbd");  // U+FFFD
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

// run --resume continues only a well-formed report of the same config and cells, partial or
// finished; anything else in the directory (other runs, other shards, broken files) is left
// alone.
TEST(Report, ResumeContinuesOnlyThisRunsReport) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "kvbench_resume";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const nlohmann::json config = {{"name", "r"}, {"threads", 1}};
  auto partial = [&](const nlohmann::json& cells, size_t planned) {
    return nlohmann::json{{"schema", "kvbench.report"},
                          {"schema_version", 2},
                          {"config", config},
                          {"cells", cells},
                          {"partial", {{"cells_done", cells.size()}, {"cells_planned", planned}}}};
  };
  // A cell as reports hold it (what `kvbench report` checks), with its id and status.
  auto cell = [](const nlohmann::json& id, const std::string& status = "ok", uint64_t seed = 5) {
    return nlohmann::json{{"id", id},
                          {"suite", "kernels"},
                          {"method", {{"name", "full"}}},
                          {"status", status},
                          {"seed", seed}};
  };
  auto write = [&](const std::string& name, const nlohmann::json& j) {
    std::ofstream(dir / name) << j.dump();
  };
  const std::vector<std::string> ids = {"a", "b", "c"};
  write("r-1.json", partial(nlohmann::json::array({cell("a")}), 3));
  write("r-2.json", partial(nlohmann::json::array({cell("x")}), 3));  // another shard's cell
  write("r-3.json", partial(nlohmann::json::array({cell(7)}), 3));    // not an id
  nlohmann::json bad = partial(nlohmann::json::array({cell("a")}), 3);
  bad["partial"] = 3;
  write("r-4.json", bad);
  nlohmann::json other = partial(nlohmann::json::array({cell("b")}), 3);
  other["config"]["threads"] = 2;  // another config
  write("r-5.json", other);
  write("r-6.json", partial(nlohmann::json::array({cell("a")}), 2));  // planned another cell count
  std::ofstream(dir / "r-7.json") << "{not json";
  write("r-9.json", partial(nlohmann::json::array({5}), 3));  // a cell not an object
  write("r-10.json", partial(nlohmann::json::array({{{"id", "a"}, {"status", nullptr}}}),
                             3));  // a status not a string
  // One malformed cell costs only itself: y is reused.
  write("r-11.json", partial(nlohmann::json::array({cell("y"), 5}), 3));
  // The same id measured with another run seed (other prompts) is another result; a cell
  // without a seed cannot be told apart and is not reused.
  nlohmann::json unseeded = cell("z");
  unseeded.erase("seed");
  write("r-12.json", partial(nlohmann::json::array({cell("y", "ok", 6), unseeded}), 3));
  ContinuedReport found = report_to_continue(dir, config, ids);
  EXPECT_EQ(found.path, dir / "r-1.json");
  EXPECT_TRUE(found.partial);
  std::filesystem::remove(dir / "r-1.json");
  EXPECT_EQ(report_to_continue(dir, config, ids).path, std::filesystem::path());
  // A finished report of the three cells (one failed) is continued, keeping its start time;
  // one of other cells, or fewer of them, is not.
  nlohmann::json finished = partial({cell("a"), cell("b", "failed"), cell("c")}, 3);
  finished.erase("partial");
  finished["created"] = "2026-01-02T03:04:05Z";
  write("r-0.json", finished);
  nlohmann::json two = finished;
  two["cells"].erase(2);
  write("r-8.json", two);
  found = report_to_continue(dir, config, ids);
  EXPECT_EQ(found.path, dir / "r-0.json");
  EXPECT_FALSE(found.partial);
  EXPECT_EQ(found.created, "2026-01-02T03:04:05Z");
  EXPECT_FALSE(found.all_ok);  // b failed: a resumed run rewrites it even with nothing to run
  // The cells a resumed run reuses: the ok cells of well-formed reports (ids name a cell's
  // config, so other configs' cells are never planned); malformed cells (r-3's id 7, r-9's 5,
  // r-10's status) are skipped with a warning, not fatal, and their files' other cells kept.
  std::map<std::string, nlohmann::json> reused;
  ASSERT_NO_THROW(reused = previous_ok_cells(dir));
  std::vector<std::string> names;
  for (const auto& [id, c] : reused) names.push_back(id);
  EXPECT_EQ(names, (std::vector<std::string>{"a@5", "b@5", "c@5", "x@5", "y@5", "y@6"}));
  EXPECT_EQ(resume_key("y", 6), "y@6");
  std::filesystem::remove_all(dir);
  // The later report's cell wins: a run's second attempt ("-2") after its first, though its
  // name with ".json" sorts first; a later `created` over an earlier one whatever the names.
  std::filesystem::create_directories(dir);
  nlohmann::json first = partial(nlohmann::json::array({cell("a")}), 1), second = first;
  first["created"] = second["created"] = "2026-12-07T10:00:00Z";
  first["cells"][0]["note"] = "first";
  second["cells"][0]["note"] = "second";
  write("r-20261207T100000Z.json", first);
  write("r-20261207T100000Z-2.json", second);
  EXPECT_EQ(previous_ok_cells(dir)["a@5"]["note"], "second");
  nlohmann::json later = first;
  later["created"] = "2026-12-07T11:00:00Z";
  later["cells"][0]["note"] = "later";
  write("a-20261207T110000Z.json", later);
  EXPECT_EQ(previous_ok_cells(dir)["a@5"]["note"], "later");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvbench
