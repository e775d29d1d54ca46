#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "kvbench/cli/commands.h"
#include "kvbench/model/presets.h"
#include "kvbench/model/transformer.h"

namespace kvbench {

CLI::Validator non_negative() {
  return CLI::Validator(
      [](const std::string& v) {
        return v.find('-') == std::string::npos ? std::string()
                                                : "expected a number >= 0, got " + v;
      },
      "NONNEGATIVE");
}

void register_make_model_command(CLI::App& app, GlobalOptions& global) {
  struct Options {
    std::string preset;
    std::string out;
    uint64_t seed = 0;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "make-model", "write a random-weight checkpoint of a tiny preset in the Hugging Face layout");
  sub->add_option("--preset", opt->preset,
                  "tiny-llama, tiny-mistral, tiny-qwen2 or tiny-qwen3 (real-scale presets are "
                  "built in memory only)")
      ->required();
  sub->add_option("--out", opt->out, "directory to write (created if absent)")->required();
  sub->add_option("--seed", opt->seed, "weight seed")->capture_default_str()->check(non_negative());
  sub->callback([opt, &global] {
    global.action = [opt] {
      const ModelPreset& preset = find_model_preset(opt->preset);
      write_preset_checkpoint(preset, opt->out, opt->seed);
      std::cout << "wrote " << preset.name << " (" << preset.summary << ") to " << opt->out << "\n";
      return 0;
    };
  });
}

}  // namespace kvbench
