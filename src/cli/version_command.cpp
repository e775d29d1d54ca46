#include <CLI/CLI.hpp>

#include <iostream>

#include "kvbench/cli/commands.h"
#include "kvbench/core/environment.h"
#include "kvbench/core/text.h"
#include "kvbench/core/version.h"

namespace kvbench {
namespace {

int print_version(int threads) {
  set_thread_count(threads > 0 ? threads : available_cores());
  const Environment env = capture_environment();
  std::cout << "kvbench " << version() << " (git " << git_revision() << ")\n"
            << "libtorch: " << env.libtorch << "\n"
            << "BLAS: " << env.blas.name
            << (env.blas.library.empty() ? "" : " [" + env.blas.library + "]") << "\n";
  if (!env.blas.detail.empty()) std::cout << "BLAS config: " << env.blas.detail << "\n";
  std::cout << "threads: " << env.threads << " (of " << env.cores << " cores)\n"
            << "CPU: " << env.cpu_model << ", last-level cache " << format_bytes(env.llc_bytes)
            << " (" << env.llc_source << ")\n"
            << "CUDA support: " << (env.cuda.built ? "built" : "not built") << "\n";
  if (env.cuda.device_count > 0) {
    for (const auto& g : env.cuda.devices) {
      std::cout << "CUDA device: " << g.name << " (sm_" << g.compute_major << g.compute_minor
                << ", " << format_bytes(static_cast<double>(g.memory_bytes)) << ")\n";
    }
  } else {
    std::cout << "CUDA device: none visible (" << env.cuda.error << ")\n";
  }
  return 0;
}

}  // namespace

void register_version_command(CLI::App& app, GlobalOptions& global) {
  auto threads = std::make_shared<int>(0);
  CLI::App* sub = app.add_subcommand("version", "versions, BLAS, threads and CUDA availability");
  sub->add_option("--threads", *threads, "intra-op threads to report (default: all cores)")
      ->check(integer_option(1, 4096));
  sub->callback(
      [threads, &global] { global.action = [threads] { return print_version(*threads); }; });
}

}  // namespace kvbench
