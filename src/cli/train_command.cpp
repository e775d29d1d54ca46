#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/cli/progress_display.h"
#include "kvbench/core/error.h"
#include "kvbench/train/trainer.h"

namespace kvbench {
namespace {

// A directory that holds a run is continued with --resume, never started over by mistake: a
// fresh run would replace its log at once and its checkpoint at the first save. --resume needs
// the optimizer state, written with the first checkpoint: a run stopped before it left only a
// log, which is named apart so that neither message points at the other.
void refuse_to_overwrite_a_run(const std::string& out, bool resume) {
  if (resume) return;
  namespace fs = std::filesystem;
  if (fs::exists(fs::path(out) / "train_state.safetensors"))
    throw ConfigError("--out", out +
                                   " already holds a run (train_state.safetensors): --resume "
                                   "continues it; to start over, remove it or choose another "
                                   "--out");
  for (const char* file : {"train_log.jsonl", "model.safetensors"}) {
    if (fs::exists(fs::path(out) / file))
      throw ConfigError("--out", out + " holds " + file +
                                     " but no checkpoint to resume (train_state.safetensors: a "
                                     "run stopped before its first save, or a model): remove "
                                     "it to start over, or choose another --out");
  }
}

// The checkpoint directory, made before any step is trained, so that a path that cannot be a
// directory is a usage error rather than a failure after the first steps.
void make_out_dir(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw ConfigError("--out", "cannot create '" + out + "': " + ec.message());
  if (!fs::is_directory(out))
    throw ConfigError("--out", "'" + out + "' exists and is not a directory");
}

}  // namespace

void register_train_command(CLI::App& app, GlobalOptions& global) {
  struct Options {
    std::string config, out;
    bool resume = false;
    int64_t steps = 0;
    int64_t threads = 0;
    int64_t until = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("train",
                                     "train a small Llama-architecture model on the synthetic "
                                     "tasks (recipe: configs/train-*.json, "
                                     "docs/models.md) and write it as a Hugging Face checkpoint");
  sub->add_option("--config", opt->config, "training recipe (JSON)")->required();
  sub->add_option("--out", opt->out,
                  "checkpoint directory (model, tokenizer, train_state.safetensors, "
                  "train_log.jsonl)")
      ->required();
  sub->add_flag("--resume", opt->resume,
                "continue from the checkpoint in --out (same recipe; bit-identical to an "
                "uninterrupted run)");
  sub->add_option("--threads", opt->threads, "override the recipe's intra-op thread count")
      ->check(integer_option(1, 1024));
  sub->add_option("--until", opt->until,
                  "stop after this step (same schedule as the full recipe; --resume continues)")
      ->check(integer_option(1, uint64_t{1} << 40));
  sub->callback([opt, &global] {
    global.action = [opt] {
      TrainRecipe recipe = load_train_recipe(opt->config);
      if (opt->threads > 0) recipe.threads = opt->threads;
      refuse_to_overwrite_a_run(opt->out, opt->resume);
      if (!opt->resume) make_out_dir(opt->out);  // (--resume: the Trainer names what is missing)
      Trainer trainer(recipe, opt->out, opt->resume);
      const bool tty = stderr_is_tty();
      std::unique_ptr<ProgressDisplay> display;
      if (tty) {
        display = std::make_unique<ProgressDisplay>(std::cerr, true);
        display->begin("train", static_cast<size_t>(recipe.total_steps()));
        for (int64_t i = 0; i < trainer.step(); ++i) display->advance("");
      }
      spdlog::info("train: {} from step {} of {} into {}", opt->config, trainer.step(),
                   recipe.total_steps(), opt->out);
      trainer.run(
          [&](const TrainProgress& p) {
            if (!display) return;
            char line[160];
            std::snprintf(line, sizeof(line), "loss %.3f answer %.3f lr %.2e %.2f s/step", p.loss,
                          p.answer_loss, p.lr, p.step_s);
            display->advance(line);
          },
          [&](const std::string& event) {
            if (display) std::cerr << "\r\033[K";
            spdlog::info("train: {}", event);
          },
          opt->until);
      if (display) display->end();
      std::cout << "trained " << trainer.step() << " of " << recipe.total_steps()
                << " steps: " << opt->out << "\n";
      return 0;
    };
  });
}

}  // namespace kvbench
