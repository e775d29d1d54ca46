// Test helper for the suites end to end: one cell of a one-suite run on a tiny randomly
// initialised model, with the "full" method unless a test sets another.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "kvbench/core/environment.h"
#include "kvbench/core/progress.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/run_spec.h"
#include "kvbench/suites/suite.h"

namespace kvbench::testing_support {

struct Harness {
  RunSpec spec;
  Environment env;
  ModelProvider model;
  NullProgress progress;
  nlohmann::json method = {{"name", "full"}};
  std::string id = "test.cell";
  uint64_t cell_seed = 7;  // the cell's own seed (the runner derives it from the run and cell id)

  // `suite`: the suite's config entry; `preset`: the model preset ("tiny-qwen3", "tiny-llama").
  explicit Harness(const nlohmann::json& suite, const std::string& preset)
      : spec(parse_run_spec(nlohmann::json{{"suites", {suite}},
                                           {"threads", 1},
                                           {"model", {{"preset", preset}, {"random_init", true}}}},
                            "t")),
        model(spec.model) {}
  CellOutput run(Suite& s) {
    CellContext ctx{id, spec, env, method, spec.suites[0].params, cell_seed, progress, model};
    return s.run(ctx);
  }
};

}  // namespace kvbench::testing_support
