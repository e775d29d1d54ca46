#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"
#include "kvbench/suites/run_spec.h"

namespace kvbench {

namespace {

// Why `dir` must not be written over, or "" when it may: it is absent or empty, or holds a
// preset checkpoint kvbench wrote (which make-model can write again). Anything else (a
// downloaded or trained checkpoint, other files) is the user's.
std::string why_not_overwrite(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return "";
  if (!std::filesystem::is_directory(dir, ec)) return "it exists and is not a directory";
  if (std::filesystem::is_empty(dir, ec)) return "";
  if (ec) return "it cannot be read (" + ec.message() + ")";
  std::ifstream in(dir / "config.json");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in, json_depth_limit((dir / "config.json").string()),
                                   /*allow_exceptions=*/false);
  } catch (const Error&) {  // nested too deep: not a preset's config
  }
  const bool preset = config.is_object() && config.contains("kvbench") &&
                      config["kvbench"].is_object() && config["kvbench"].contains("preset") &&
                      config["kvbench"]["preset"].is_string();
  return preset ? ""
                : "it holds files that are not a kvbench preset checkpoint (no config.json with "
                  "kvbench's preset mark)";
}

}  // namespace

void register_make_model_command(CLI::App& app, GlobalOptions& global) {
  struct Options {
    std::string preset;
    std::string out;
    uint64_t seed = 0;
    bool force = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "make-model", "write a random-weight checkpoint of a tiny preset in the Hugging Face layout");
  sub->add_option("--preset", opt->preset,
                  "tiny-llama, tiny-mistral, tiny-qwen2 or tiny-qwen3 (real-scale presets are "
                  "built in memory only)")
      ->required();
  sub->add_option("--out", opt->out, "directory to write (created if absent)")->required();
  sub->add_option("--seed", opt->seed, "weight seed (at most 2^53 - 1, as model.seed)")
      ->capture_default_str()
      ->check(integer_option(0, kMaxWeightSeed, " (2^53 - 1, the largest model.seed)"));
  sub->add_flag("--force", opt->force,
                "write into --out even when it holds files other than a kvbench preset "
                "checkpoint (they may be overwritten)");
  sub->callback([opt, &global] {
    global.action = [opt] {
      const ModelPreset* preset = nullptr;
      try {  // a preset it does not write is a usage error, as a bad --seed is
        preset = &find_model_preset(opt->preset);
        check_preset_writable(*preset);
      } catch (const Error& e) {
        spdlog::error("make-model: {}", e.what());
        return 2;
      }
      if (const std::string why = why_not_overwrite(opt->out); !why.empty() && !opt->force) {
        spdlog::error(
            "make-model: will not write into {}: {}; choose another --out, or pass "
            "--force to overwrite",
            opt->out, why);
        return 2;
      }
      try {
        write_preset_checkpoint(*preset, opt->out, opt->seed);
      } catch (const std::filesystem::filesystem_error& e) {
        spdlog::error("make-model: cannot write {}: {}", opt->out.empty() ? "\"\"" : opt->out,
                      e.code().message());
        return 2;
      } catch (const Error& e) {  // a file's atomic write (a read-only directory or mount)
        spdlog::error("make-model: cannot write {}: {}", opt->out, e.what());
        return 2;
      }
      std::cout << "wrote " << preset->name << " (" << preset->summary << ") to " << opt->out
                << "\n";
      return 0;
    };
  });
}

}  // namespace kvbench
