// A cell is one (suite entry x method) pair of a run: the unit that runs, fails, and is reported
// independently. Its id is derived from a hash of its resolved content only (suite, params,
// method, device, threads, model settings), so the same cell has the same id in every run and
// sweep shard, and a changed input never reuses an old id.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/suites/run_spec.h"

namespace kvbench {

struct Cell {
  std::string id;           // "<suite>.<method>.<16 hex digits>"
  size_t suite_index = 0;   // position in RunSpec::suites
  size_t method_index = 0;  // position in RunSpec::methods
  std::string suite;
  nlohmann::json params;  // resolved suite parameters
  nlohmann::json method;  // resolved method entry
  uint64_t seed = 0;      // derived from the run seed and the cell's hash
  // What --shard hashes: the id's content with `threads: "auto"` as written, not this
  // machine's core count, so the tasks of a job array on unlike nodes split the cells alike.
  uint64_t shard_hash = 0;
};

// 64-bit FNV-1a of the bytes of `text`.
uint64_t fnv1a64(const std::string& text);
// A deterministic part of a run's cells, for running one config as n jobs (`run --shard i/n`).
struct Shard {
  int index = 0, count = 1;
};
// "i/n" with 0 <= i < n; throws ConfigError("--shard", ...) otherwise.
Shard parse_shard(const std::string& text);
// The cells whose shard_hash is `shard.index` modulo `shard.count`, in run order: the shards of
// one config are disjoint and together complete, whatever the machine or the other shards do.
std::vector<Cell> select_shard(const std::vector<Cell>& cells, Shard shard);

// Suites outer, methods inner (the baseline method usually first, next to its comparisons).
// Throws ConfigError when two cells would be identical.
std::vector<Cell> expand_cells(const RunSpec& spec);

// A suite parameter that names an input: a `*_file` or `*_dir` key with a non-empty value.
// Validation checks that each exists; cell ids fingerprint each one's content.
struct InputPath {
  std::string key, path;
  bool is_dir = false;
};
std::vector<InputPath> input_paths(const nlohmann::json& params);

}  // namespace kvbench
