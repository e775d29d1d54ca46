// Runs a run's cells in order. A failing cell is recorded with its error and the next one
// runs; the caller decides the exit code from the results.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvbench/core/environment.h"
#include "kvbench/core/progress.h"
#include "kvbench/suites/cell.h"
#include "kvbench/suites/model_provider.h"
#include "kvbench/suites/suite.h"

namespace kvbench {

struct CellResult {
  Cell cell;
  bool ok = false;
  std::string error;    // one line, when !ok
  std::string started;  // RFC 3339
  double duration_s = 0;
  uint64_t peak_rss_bytes = 0;  // process peak resident memory during the cell
  bool peak_rss_reset = false;  // false: the peak may include earlier cells
  CellOutput output;
  // The prepare step of the cell's codec (ModelProvider::preparation), null when none ran.
  nlohmann::json preparation;
  // probe_read_gbps just before and just after the cell (runs on the CPU only; 0: not probed).
  double probe_before_gbps = 0, probe_after_gbps = 0;
};

class Runner {
 public:
  using SuiteFactory = std::function<std::unique_ptr<Suite>(const std::string& name)>;
  // The machine's read speed in GB/s (probe_read_gbps), read at both ends of each cell of a CPU
  // run.
  using Probe = std::function<double()>;
  // The default factory builds suites from the registry, the default probe is
  // probe_read_gbps; tests inject their own.
  explicit Runner(SuiteFactory factory = {}, Probe probe = {});

  // Called after each cell with the results so far (the last one just ended), e.g. to write
  // a partial report that survives the process being killed.
  using AfterCell = std::function<void(const std::vector<CellResult>& done)>;

  std::vector<CellResult> run(const RunSpec& spec, const std::vector<Cell>& cells,
                              const Environment& env, Progress& progress, ModelProvider& model,
                              const AfterCell& after_cell = {}) const;

 private:
  SuiteFactory factory_;
  Probe probe_;
};

size_t count_failed(const std::vector<CellResult>& results);

// Each cell's estimated peak bytes (Suite::estimate_bytes), reading only the model's config.
// `paged`: the run's attention is "paged" (latent rows stored padded); `reference_attention`:
// it is "reference" (a layer's K/V dequantized to fp32 beside the cache).
std::vector<uint64_t> estimate_cells(const std::vector<Cell>& cells, ModelProvider& model,
                                     const Environment& env, bool paged = false,
                                     bool reference_attention = false);
// The memory a run's cells are planned against: the GPU's when the run's device is cuda (the
// model, cache and activations live there), else MemAvailable; 0 when unknown.
uint64_t plan_memory_bytes(const RunSpec& spec, const Environment& env);
// Throws Error naming the first cell whose estimate exceeds 80% of `available` bytes.
void refuse_oversized_plan(const std::vector<Cell>& cells, const std::vector<uint64_t>& estimates,
                           uint64_t available);

}  // namespace kvbench
