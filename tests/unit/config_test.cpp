// Config loading and validation: every error is one line naming the key path.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "env_guard.h"
#include "kvbench/cli/config_loader.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/text.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/run_spec.h"

namespace kvbench {
namespace {

using nlohmann::json;

json minimal() { return json::parse(R"({"suites": [{"name": "kernels"}]})"); }

// The ConfigError message for `config`, or "" when it is valid.
std::string error_of(const json& config) {
  try {
    parse_run_spec(config, "test");
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "multi-line: " << e.what();
    return e.what();
  }
  return "";
}

json with(const std::string& patch) {
  json c = minimal();
  c.merge_patch(json::parse(patch));
  return c;
}

TEST(Config, DefaultsAreFilledIn) {
  RunSpec spec = parse_run_spec(minimal(), "quick");
  EXPECT_EQ(spec.name, "quick");
  EXPECT_EQ(spec.device, "cpu");
  EXPECT_EQ(spec.threads, available_cores());
  EXPECT_EQ(spec.seed, 0u);
  EXPECT_EQ(spec.model.dtype, "auto");
  EXPECT_EQ(spec.output_dir, "results");
  ASSERT_EQ(spec.methods.size(), 1u);
  EXPECT_EQ(spec.methods[0]["name"], "full");
  ASSERT_EQ(spec.suites.size(), 1u);
  EXPECT_EQ(spec.suites[0].params["repeats"], 20);
  EXPECT_FALSE(spec.suites[0].params.contains("name"));
  // The resolved config echoes every default, with threads made concrete.
  EXPECT_EQ(spec.resolved["threads"], available_cores());
  EXPECT_EQ(spec.resolved["suites"][0]["name"], "kernels");
  EXPECT_EQ(spec.resolved["suites"][0]["head_dim"], 128);
}

TEST(Config, UnknownKeysNameTheClosestValidKey) {
  EXPECT_EQ(error_of(with(R"({"thread": 2})"))
                .rfind("config: thread: unknown key (did you mean 'threads'?); valid keys: ", 0),
            0u);
  EXPECT_NE(error_of(with(R"({"model": {"pth": "/x"}})"))
                .find("model.pth: unknown key (did you mean 'path'?)"),
            std::string::npos);
  json c = minimal();
  c["suites"][0]["repeat"] = 3;
  EXPECT_NE(error_of(c).find("suites[0].repeat: unknown key (did you mean 'repeats'?)"),
            std::string::npos);
  EXPECT_NE(error_of(with(R"({"xyzzy": 1})")).find("config: xyzzy: unknown key; valid keys:"),
            std::string::npos);
}

TEST(Config, WrongTypes) {
  EXPECT_EQ(error_of(with(R"({"threads": "two"})")),
            "config: threads: expected integer in [1, 4096] or \"auto\", got \"two\"");
  EXPECT_EQ(error_of(with(R"({"seed": 1.5})")), "config: seed: expected integer >= 0, got 1.5");
  EXPECT_EQ(error_of(with(R"({"device": 3})")),
            "config: device: expected one of \"cpu\", \"cuda\", got 3");
  EXPECT_NE(
      error_of(with(R"({"model": "/path"})")).find("config: model: expected an object, got string"),
      std::string::npos);
  EXPECT_NE(
      error_of(with(R"({"methods": {"name": "full"}})")).find("config: methods: expected a list"),
      std::string::npos);
  EXPECT_NE(error_of(json::parse("[1, 2]")).find("expected a JSON object at the top level"),
            std::string::npos);
}

TEST(Config, NumberAndStringListsCheckEachElement) {
  json c = minimal();
  c["suites"][0] = {{"name", "output_length"}, {"control_temperatures", {0.9, "hot"}}};
  EXPECT_EQ(error_of(c),
            "config: suites[0].control_temperatures[1]: expected number in [0, 100], got \"hot\"");
  c["suites"][0] = {{"name", "output_length"}, {"control_temperatures", 0.9}};
  EXPECT_EQ(
      error_of(c),
      "config: suites[0].control_temperatures: expected list of numbers in [0, 100], got 0.9");
  c["suites"][0] = {{"name", "output_length"}, {"prompt_texts", {"a", 3}}};
  EXPECT_EQ(error_of(c), "config: suites[0].prompt_texts[1]: expected string, got 3");
  c["suites"][0] = {{"name", "output_length"}, {"control_temperatures", json::array()}};
  EXPECT_NE(error_of(c).find("model: none configured, but suites[0] (output_length) runs one"),
            std::string::npos);
  c["model"] = {{"preset", "tiny-llama"}, {"random_init", true}};
  EXPECT_EQ(error_of(c), "");  // an empty list switches the controls off
}

TEST(Config, OutOfRangeValues) {
  EXPECT_EQ(error_of(with(R"({"threads": 0})")),
            "config: threads: expected integer in [1, 4096] or \"auto\", got 0");
  json c = minimal();
  c["suites"][0]["repeats"] = 0;
  EXPECT_EQ(error_of(c), "config: suites[0].repeats: expected integer in [1, 100000], got 0");
  c = minimal();
  c["suites"][0]["contexts"] = {1024, 0};
  EXPECT_EQ(error_of(c), "config: suites[0].contexts[1]: expected integer in [1, 16777216], got 0");
  c = minimal();
  c["suites"][0]["head_dim"] = 96;
  EXPECT_EQ(error_of(c), "config: suites[0].head_dim: expected integer in {64, 128}, got 96");
  EXPECT_EQ(
      error_of(with(R"({"model": {"dtype": "fp16"}})")),
      "config: model.dtype: expected one of \"auto\", \"float32\", \"float16\", \"bfloat16\", "
      "got \"fp16\"");
  c = minimal();
  c["suites"][0] = {{"name", "accuracy"}, {"task", "passkey"}, {"max_prompt_tokens", 1}};
  EXPECT_EQ(
      error_of(c),
      "config: suites[0].max_prompt_tokens: expected 0 (the model's length) or at least 2, got 1");
}

TEST(Config, AccuracyTaskParamsAreCheckedAgainstTheTask) {
  auto accuracy = [](const std::string& extra) {
    return json::parse(R"({"model": {"preset": "tiny-llama", "random_init": true},
                           "suites": [{"name": "accuracy", "task": "niah_multikey")" +
                       extra + "}]}");
  };
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"num_keys": 8, "key_type": "uuids"})")), "");
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"depth": 0.25})")), "");
  const std::string unknown = error_of(accuracy(R"(, "task_params": {"num_key": 8})"));
  EXPECT_NE(unknown.find("config: suites[0].task_params.num_key: unknown key (did you mean "
                         "'num_keys'?); valid keys: depth, num_keys, num_values"),
            std::string::npos)
      << unknown;
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"num_keys": 0})")),
            "config: suites[0].task_params.num_keys: expected integer in [1, 1000], got 0");
  // A check across two keys (num_queries <= num_keys) fails at validation, not mid-run.
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"num_keys": 2, "num_queries": 3})")),
            "config: suites[0].task_params.num_queries: expected at most num_keys (2), got 3");
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"target_tokens": 512})")),
            "config: suites[0].task_params.target_tokens: is the suite's own key; set "
            "target_tokens beside task");
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": {"seed": 3})")),
            "config: suites[0].task_params.seed: is set per sample: the run's seed + the "
            "sample's index");
  EXPECT_EQ(error_of(accuracy(R"(, "task_params": [1])")),
            "config: suites[0].task_params: expected object, got [1]");
  // passkey has no num_keys; a data file takes no task parameters.
  EXPECT_NE(error_of(json::parse(R"({"suites": [{"name": "accuracy", "task": "passkey",
                                     "task_params": {"num_keys": 2}}]})"))
                .find("config: suites[0].task_params.num_keys: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"suites": [{"name": "accuracy", "data_file": "/dev/null",
                                     "task_params": {"depth": 0.5}}]})"))
                .find("config: suites[0].task_params: sets a synthetic task's parameters"),
            std::string::npos);
}

TEST(Config, MethodsAndSuitesAreCheckedByName) {
  EXPECT_EQ(
      error_of(with(R"({"methods": [{"name": "ful"}]})")),
      "config: methods[0].name: unknown method 'ful' (did you mean 'full'?); known methods: " +
          join(method_names(), ", "));
  EXPECT_NE(error_of(with(R"({"methods": [{"bits": 4}]})"))
                .find("config: methods[0].name: expected a method name"),
            std::string::npos);
  EXPECT_NE(
      error_of(with(R"({"methods": []})")).find("config: methods: expected at least one entry"),
      std::string::npos);
  EXPECT_NE(error_of(with(R"({"methods": [{"name": "full", "bits": 4}]})"))
                .find("config: methods[0].bits: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of(json::parse(R"({"suites": [{"name": "kernals"}]})"))
                .find("config: suites[0].name: unknown suite 'kernals' (did you mean 'kernels'?)"),
            std::string::npos);
  EXPECT_EQ(error_of(json::object()),
            "config: suites: required key missing; expected a list like [{\"name\": ...}]");
}

// A parameter that acts only beside another's value is refused elsewhere (it would give the
// cell another id and change nothing measured); its default, as a resolved entry holds it,
// passes. So is a weight seed without a preset to seed.
TEST(Config, ParamsThatWouldChangeNothingAreRefused) {
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "fp8", "scale_value": 2}]})")),
            "config: methods[0].scale_value: applies only with \"scale\": \"fixed\" (here "
            "\"amax\"); leave it out");
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "fp8", "scale": "fixed",
                                            "key_amax_divisor": 100}]})")),
            "config: methods[0].key_amax_divisor: applies only with \"scale\": \"amax\" (here "
            "\"fixed\"); leave it out");
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "kvproj", "rank": 8, "rank_ratio": 0.25}]})")),
            "config: methods[0].rank_ratio: applies only with \"rank\": 0 (here 8); leave it out");
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "snapkv", "codec": {"name": "fp8",
                                            "scale_value": 3}}]})")),
            "config: methods[0].codec.scale_value: applies only with \"scale\": \"fixed\" "
            "(here \"amax\"); leave it out");
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "fp8", "scale": "fixed", "scale_value": 2},
                                           {"name": "fp8", "scale_value": 1.0},
                                           {"name": "palu", "rank": 8, "rank_ratio": 0.7},
                                           {"name": "kvproj", "rank_ratio": 0.25}]})")),
            "");
  // Re-resolving a resolved entry (compare does) passes.
  const json fp8 = resolve_method(json{{"name", "fp8"}}, "m");
  EXPECT_EQ(resolve_method(fp8, "m"), fp8);
  EXPECT_EQ(error_of(with(R"({"model": {"path": "/tmp/x", "seed": 3}})")),
            "config: model.seed: seeds the random weights of model.preset; without a preset the "
            "checkpoint has its own (remove model.seed)");
}

// compute_dtype "auto" becomes float32 on the CPU and float16 on a GPU, and the resolved config
// (copied into the report) says which; float16 on the CPU is refused with the reason.
TEST(Config, ComputeDtypeResolvesPerDevice) {
  RunSpec cpu = parse_run_spec(minimal(), "t");
  EXPECT_EQ(cpu.model.compute_dtype, "float32");
  EXPECT_EQ(cpu.model.device, "cpu");
  EXPECT_EQ(cpu.resolved["model"]["compute_dtype"], "float32");
  RunSpec gpu = parse_run_spec(with(R"({"device": "cuda"})"), "t");
  EXPECT_EQ(gpu.model.compute_dtype, "float16");
  EXPECT_EQ(gpu.model.device, "cuda");
  RunSpec bf16 = parse_run_spec(with(R"({"model": {"compute_dtype": "bfloat16"}})"), "t");
  EXPECT_EQ(bf16.model.compute_dtype, "bfloat16");
  EXPECT_EQ(error_of(with(R"({"model": {"compute_dtype": "float16"}})")),
            "config: model.compute_dtype: \"float16\" needs device \"cuda\" (libtorch's CPU "
            "matrix multiply has no fp16 kernels); use \"bfloat16\" or \"float32\" on the CPU");
  EXPECT_NE(error_of(with(R"({"model": {"compute_dtype": "fp16"}})")).find("model.compute_dtype"),
            std::string::npos);
}

TEST(Config, CudaWithoutDeviceIsAClearError) {
  RunSpec spec = parse_run_spec(with(R"({"device": "cuda"})"), "t");
  CudaInfo none;
  none.error = "cudaErrorInsufficientDriver";
  try {
    check_device(spec, none);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: device: \"cuda\" requested but no CUDA device is visible "
              "(cudaErrorInsufficientDriver); use \"cpu\"");
  }
  CudaInfo one;
  one.device_count = 1;
  EXPECT_NO_THROW(check_device(spec, one));
}

TEST(ConfigFile, MalformedJsonReportsLineAndColumn) {
  const std::string text = "{\n  \"threads\": 2,\n  \"seed\": ,\n}\n";
  try {
    parse_json_text(text, "bad.json");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("config: bad.json:3:11: invalid JSON: ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
}

TEST(ConfigFile, ANumberPastADoubleNamesTheFile) {
  try {
    parse_json_text(R"({"seed": 1e400})", "big.json");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: big.json: invalid JSON: number overflow parsing '1e400'");
  }
}

TEST(ConfigFile, AKeyGivenTwiceIsAnError) {
  // JSON parsers keep the later value; a config that says "methods" twice meant one of them.
  const std::string text = R"({"threads": 1, "suites": [{"name": "kernels", "repeats": 2,
                                                          "repeats": 3}]})";
  try {
    parse_json_text(text, "twice.json");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: twice.json: key \"repeats\" appears twice in one object (the later "
              "value would silently win); keep one");
  }
  // The same key in two objects is two keys, objects in lists included; one repeated after a
  // nested object closes is still caught.
  EXPECT_NO_THROW(
      parse_json_text(R"({"a": {"name": 1}, "b": [{"name": 2}, {"name": 3}], "name": 4})", "ok"));
  EXPECT_THROW(parse_json_text(R"({"a": {"x": 1}, "a": 2})", "twice"), ConfigError);
  EXPECT_THROW(parse_json_text(R"({"l": [{"n": 1, "n": 2}]})", "twice"), ConfigError);
}

TEST(ConfigFile, MissingFile) {
  try {
    read_config_file("/nonexistent/kvbench.json");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "config: /nonexistent/kvbench.json: no such file");
  }
  try {
    read_config_file("/dev/null");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: /dev/null: not a regular file, expected a JSON config file");
  }
}

// Keys and names from the input are shown escaped and cut when they are not short plain text, so
// an error stays one short line (a key "a\nb" made two; a 1 MB key a 1 MB message).
TEST(ConfigFile, UnprintableKeysAndNamesAreShownEscaped) {
  EXPECT_EQ(key_text("threads"), "threads");
  EXPECT_EQ(key_text("a\nb"), "\"a\\nb\"");
  EXPECT_EQ(key_text("caf\xe9"), "\"caf\\\\xe9\"");
  EXPECT_LT(key_text(std::string(1 << 20, 'k')).size(), 200u);
  EXPECT_EQ(error_of(json::parse(R"({"suites": [{"name": "kernels"}], "a\nb": 1})")).substr(0, 19),
            "config: \"a\\nb\": unk");
  const std::string long_name(100000, 'x');
  for (const json& config :
       {json{{"suites", {{{"name", long_name}}}}},
        json{{"suites", {{{"name", "kernels"}}}}, {"methods", {{{"name", "a\tb"}}}}}}) {
    const std::string e = error_of(config);
    EXPECT_LT(e.size(), 2000u);
    EXPECT_EQ(e.find('\t'), std::string::npos) << e;
  }
  // A value past int64 where a list of integers is expected is out of range (it was cast first).
  EXPECT_EQ(error_of(with(R"({"methods": [{"name": "int4", "group": 10000000000000000000}]})")),
            "config: methods[0].group: expected integer in {8, 16, 32, 64, 128}, got "
            "10000000000000000000");
  json c = minimal();
  EXPECT_THROW(apply_override(c, "a\nb=1"), ConfigError);
  EXPECT_THROW(apply_override(c, std::string(200, 'k') + "=1"), ConfigError);
}

// A config that is not an object is said to be one before any --set applies (which named a key
// of the list, or made null an object).
TEST(ConfigFile, ANonObjectConfigIsSaidFirst) {
  auto path = std::filesystem::temp_directory_path() / "kvbench_list.json";
  for (const char* text : {"[]", "null", "3"}) {
    std::ofstream(path) << text;
    try {
      load_run_specs(path.string(), {"threads=2"});
      FAIL() << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("expected a JSON object at the top level"),
                std::string::npos)
          << e.what();
    }
  }
  std::filesystem::remove(path);
}

TEST(ConfigFile, LoadsFileAndNamesRunAfterStem) {
  auto path = std::filesystem::temp_directory_path() / "kvbench_config_test_run.json";
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "seed": 3})";
  RunSpec spec = load_run_spec(path.string(), {"threads=1"});
  EXPECT_EQ(spec.name, "kvbench_config_test_run");
  EXPECT_EQ(spec.seed, 3u);
  EXPECT_EQ(spec.threads, 1);
  std::filesystem::remove(path);
}

// A variable that picks the code a cell runs on its device (the SIMD level on the CPU, a decode
// loop on a GPU) is part of its id, so --resume never reuses a cell measured under another;
// the cell's seed (its prompts) stays, so the two are measured on the same inputs.
TEST(CellIds, TheCodePathVariablesAreInTheIdNotTheSeed) {
  const char* name = "KVBENCH_DECODE_LOOP";
  const RunSpec spec = parse_run_spec(
      nlohmann::json::parse(R"({"suites": [{"name": "kernels"}], "threads": 1})"), "t");
  ASSERT_EQ(spec.device, "cpu");
  const bool was_set = std::getenv(name) != nullptr;
  Cell plain, v4;
  testing_support::with_env(name, nullptr, [&] { plain = expand_cells(spec)[0]; });
  testing_support::with_env(name, "v4", [&] { v4 = expand_cells(spec)[0]; });
  // A GPU's decode loop does not change a CPU cell; on cuda it does.
  EXPECT_EQ(plain.id, v4.id);
  EXPECT_EQ(code_path_overrides().count(name), was_set ? 1u : 0u);
  // The CPU's variables on a CPU run: the SIMD level, and the host kernels outside paged
  // attention (KVBENCH_PAGED_PATH=kernels runs the model's ops through them, whatever the
  // attention backend). The shard a cell falls in stays.
  for (const char* var : {"KVBENCH_SIMD", "KVBENCH_PAGED_PATH"}) {
    Cell base, other;
    testing_support::with_env(var, nullptr, [&] { base = expand_cells(spec)[0]; });
    testing_support::with_env(var, std::string(var) == "KVBENCH_SIMD" ? "avx2" : "kernels",
                              [&] { other = expand_cells(spec)[0]; });
    EXPECT_NE(base.id, other.id) << var;
    EXPECT_EQ(base.seed, other.seed) << var;
    EXPECT_EQ(base.shard_hash, other.shard_hash) << var;
  }
}

// 4 and 4.0 are one setting in a number list too: a rate list written with integers is the
// default's, so two such suites are one cell.
TEST(CellIds, WholeNumbersInANumberListAreTheSameSetting) {
  const RunSpec spec = parse_run_spec(nlohmann::json::parse(R"({"suites": [{"name": "serving"},
      {"name": "serving", "rates": [1, 4, 16]}], "threads": 1,
      "model": {"preset": "tiny-llama", "random_init": true}})"),
                                      "t");
  try {
    expand_cells(spec);
    FAIL() << "two identical serving suites";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("are identical"), std::string::npos) << e.what();
  }
}

TEST(ConfigFile, GridExpandsIntoRunsGroupedByModel) {
  auto path = std::filesystem::temp_directory_path() / "kvbench_grid.json";
  std::ofstream(path) << R"({"suites": [{"name": "latency"}], "threads": 1,
    "model": {"preset": "tiny-qwen3", "random_init": true},
    "grid": {"suites.0.new_tokens": [3, 4, 5], "model.preset": ["tiny-qwen3", "tiny-llama"]}})";
  const std::vector<GridRun> runs = load_run_specs(path.string(), {});
  ASSERT_EQ(runs.size(), 6u);
  // Keys sorted ("model.preset" < "suites.0.new_tokens"), the last varying fastest; then the
  // runs of one model side by side.
  std::vector<std::string> names, presets;
  for (const auto& g : runs) {
    names.push_back(g.spec.name);
    presets.push_back(g.spec.model.preset);
    EXPECT_EQ(g.point["model.preset"], g.spec.model.preset);
    EXPECT_EQ(g.point["suites.0.new_tokens"], g.spec.suites[0].params["new_tokens"]);
  }
  EXPECT_EQ(names,
            (std::vector<std::string>{"kvbench_grid-g3", "kvbench_grid-g4", "kvbench_grid-g5",
                                      "kvbench_grid-g0", "kvbench_grid-g1", "kvbench_grid-g2"}));
  EXPECT_EQ(presets[0], presets[2]);
  EXPECT_NE(presets[2], presets[3]);
  // One run without a grid; a grid needs the sweep-aware commands.
  EXPECT_THROW(load_run_spec(path.string(), {}), ConfigError);
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"suites.0.repeats": []}})";
  try {
    load_run_specs(path.string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("grid.suites.0.repeats: expected a non-empty list"),
              std::string::npos)
        << e.what();
  }
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"suites.0.repeats": [0]}})";
  EXPECT_THROW(load_run_specs(path.string(), {}), ConfigError);  // each run is validated
  // A value listed twice would be two runs of one config, with the same cell ids.
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"seed": [1, 2, 1]}})";
  try {
    load_run_specs(path.string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("grid.seed: lists 1 twice"), std::string::npos)
        << e.what();
  }
  // Values that differ as written but not once resolved are one run twice.
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"suites.0.min_llc_multiple":
    [4, 4.0]}})";
  try {
    load_run_specs(path.string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("resolve to the same config"), std::string::npos)
        << e.what();
  }
  // One axis inside another: the outer would overwrite the inner's values.
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"suites": [[{"name":
    "kernels"}]], "suites.0.repeats": [1, 2]}})";
  try {
    load_run_specs(path.string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("grid.suites.0.repeats: lies inside grid.suites"),
              std::string::npos)
        << e.what();
  }
  // An axis the config cannot take: said once, as the grid's (no "config:" twice, no --set).
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"suites.1.repeats": [1]}})";
  try {
    load_run_specs(path.string(), {});
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "config: grid.suites.1.repeats: '1' is not an index below 1")
        << e.what();
  }
  std::filesystem::remove(path);
}

// A --set at, around or inside a grid axis would be overwritten by the grid in every run: an
// error naming both, where it was dropped without a word (--out sets output.dir).
TEST(ConfigFile, ASetTheGridWouldOverwriteIsAnError) {
  auto path = std::filesystem::temp_directory_path() / "kvbench_grid_set.json";
  std::ofstream(path) << R"({"suites": [{"name": "kernels"}], "grid": {"threads": [1, 2],
    "output.dir": ["a", "b"], "suites.0.repeats": [1, 2]}})";
  for (const auto& [set, axis] : std::vector<std::pair<std::string, std::string>>{
           {"threads=4", "threads"},
           {"output.dir=\"x\"", "output.dir"},
           {"output={\"dir\": \"x\"}", "output.dir"},
           {"suites.0.repeats=3", "suites.0.repeats"},
           {"suites=[{\"name\": \"kernels\", \"repeats\": 3}]", "suites.0.repeats"}}) {
    try {
      load_run_specs(path.string(), {set});
      FAIL() << set;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.key_path(), "grid." + axis) << set;
      EXPECT_NE(std::string(e.what()).find("sets what the grid varies"), std::string::npos)
          << e.what();
    }
  }
  // Beside the axes, around one without its key, and the grid's own keys, a --set applies.
  const auto runs = load_run_specs(path.string(), {"seed=5", "grid.threads=[3]",
                                                   R"(suites=[{"name": "kernels", "warmup": 2}])"});
  ASSERT_EQ(runs.size(), 4u);
  for (const auto& g : runs) {
    EXPECT_EQ(g.spec.seed, 5u);
    EXPECT_EQ(g.spec.threads, 3);
    EXPECT_EQ(g.spec.suites[0].params["warmup"], 2);
  }
  std::filesystem::remove(path);
}

TEST(Overrides, DottedKeysAndJsonValues) {
  json c = minimal();
  apply_override(c, "threads=2");
  EXPECT_EQ(c["threads"], 2);
  apply_override(c, R"(methods=[{"name":"full"}])");
  EXPECT_EQ(c["methods"][0]["name"], "full");
  apply_override(c, "suites.0.repeats=5");
  EXPECT_EQ(c["suites"][0]["repeats"], 5);
  apply_override(c, "model.path=/data/llama");  // not JSON: taken as a string
  EXPECT_EQ(c["model"]["path"], "/data/llama");
  apply_override(c, "output.dir=\"123\"");  // quoted: a string, not a number
  EXPECT_EQ(c["output"]["dir"], "123");
  apply_override(c, "suites.0.kv_heads=[1,2]");
  EXPECT_EQ(parse_run_spec(c, "t").suites[0].params["kv_heads"], json::array({1, 2}));
}

// An index into a key the config lacks is a typo of a list's name as often as a missing list:
// the hint a file's unknown key gets is given (before, 'suite.0.x' lost it).
TEST(Overrides, AnIndexIntoAMissingKeyNamesTheClosestOne) {
  json c = minimal();
  auto message = [&](const std::string& assignment) {
    json copy = c;
    try {
      apply_override(copy, assignment);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("suite.0.repeats=5"),
            "config: suite: --set suite.0.repeats: '0' indexes a list, but suite has none (did "
            "you mean 'suites'?)");
  EXPECT_EQ(message("methods.0.name=full"),
            "config: methods: --set methods.0.name: '0' indexes a list, but methods has none; "
            "set the whole list instead");
}

// Error messages show a value by its start: never a whole 5 MB string, never half a character,
// never a nesting deep enough to overflow the stack while printing it.
TEST(JsonText, BriefValuesAreCutBetweenCharactersAndStayShallow) {
  EXPECT_EQ(brief_json(json(7)), "7");
  EXPECT_EQ(brief_json(json::parse(R"({"a": [1, "x"]})")), R"({"a":[1,"x"]})");
  std::string accents;
  for (int i = 0; i < 200; ++i) accents += "\xc3\xa9";  // e-acute, 2 bytes
  const std::string cut = brief_json(json(accents));
  EXPECT_TRUE(is_valid_utf8(cut)) << cut;
  EXPECT_EQ(cut.substr(0, 3), "\"\xc3\xa9");
  EXPECT_NE(cut.find("... (a string of 400 bytes)"), std::string::npos) << cut;
  EXPECT_LE(cut.size(), 100u + 30u);
  json deep = json::array();
  for (int i = 0; i < 200000; ++i) deep = json::array({std::move(deep)});
  EXPECT_EQ(brief_json(deep), "[[[[[...]]]]]");
  std::string list = brief_json(json(std::vector<int>(1000, 12345)), 60);
  EXPECT_LE(list.size(), 60u);
  EXPECT_EQ(list.substr(list.size() - 3), "...");
}

TEST(JsonText, NestingPastTheLimitIsRefusedWithTheSource) {
  const std::string ok = std::string(64, '[') + std::string(64, ']');
  EXPECT_NO_THROW(parse_json_text(ok, "ok"));
  const std::string deep = std::string(66, '[') + "1" + std::string(66, ']');
  try {
    parse_json_text(deep, "deep.json");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "config: deep.json: values nested more than 64 levels deep");
  }
  json c = minimal();
  std::string key = "a";
  for (int i = 0; i < 100; ++i) key += ".a";
  EXPECT_THROW(apply_override(c, key + "=1"), ConfigError);
}

// Only paths refuse a NUL (the system would cut them there); free text may hold one.
TEST(Config, ANulIsRefusedInPathsOnly) {
  json c = minimal();
  c["description"] = std::string("a\0b", 3);
  EXPECT_NO_THROW(parse_run_spec(c, "nul"));
  c = minimal();
  c["output"] = {{"dir", std::string("out\0x", 5)}};
  try {
    parse_run_spec(c, "nul");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config: output.dir: contains a NUL character (\\u0000), got \"out\\u0000x\"");
  }
}

TEST(Overrides, BadAssignments) {
  json c = minimal();
  EXPECT_THROW(apply_override(c, "threads"), ConfigError);
  EXPECT_THROW(apply_override(c, "=3"), ConfigError);
  EXPECT_THROW(apply_override(c, "suites.4.repeats=1"), ConfigError);
  EXPECT_THROW(apply_override(c, "suites.x.repeats=1"), ConfigError);
  EXPECT_THROW(apply_override(c, "suites.00.repeats=1"), ConfigError);  // a padded index
  // An index past any list's length is refused as one, not by std::stoul overflowing.
  EXPECT_THROW(apply_override(c, "suites.99999999999999999999.repeats=1"), ConfigError);
  EXPECT_THROW(apply_override(c, "suites.0.repeats.=1"), ConfigError);  // an empty last segment
  EXPECT_THROW(apply_override(c, ".threads=1"), ConfigError);
  // JSON holds UTF-8 text only; the message shows the bytes.
  try {
    apply_override(c, "description=caf\xe9");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("description=caf\\xe9: not valid UTF-8"),
              std::string::npos)
        << e.what();
  }
  // A JSON value is checked as a config file is: a repeated key would silently lose one.
  try {
    apply_override(c, R"(methods=[{"name":"snapkv","budget":64,"budget":128}])");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--set methods: key \"budget\" appears twice"),
              std::string::npos)
        << e.what();
  }
  apply_override(c, "suites.0.repeats=1");
  EXPECT_EQ(c["suites"][0]["repeats"], 1);
  apply_override(c, "threads=2");
  EXPECT_THROW(apply_override(c, "threads.count=1"), ConfigError);
  // A typo through --set is caught by validation like one in the file.
  apply_override(c, "seeds=1");
  EXPECT_NE(error_of(c).find("seeds: unknown key (did you mean 'seed'?)"), std::string::npos);
}

}  // namespace
}  // namespace kvbench
