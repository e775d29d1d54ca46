// The one factory of the synthetic tasks: a task name plus JSON parameters (as a config's
// `{"task": "niah_multikey", "target_tokens": 8192, ...}`) to a generated TaskSample, and the
// scorer of each task. Parameters are validated against per-task ParamSpec tables (which also
// back `kvbench list`); unknown task names and keys are rejected listing the valid ones.
//
// Tasks: passkey; niah_single, niah_multikey, niah_multivalue, niah_multiquery (presets of
// make_needle_task); variable_tracking; common_words; kv_retrieval; associative_recall.
// docs/workloads.md has every
// format and parameter.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/core/param_spec.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/workloads/task_sample.h"

namespace kvbench {

// Every task name, in documentation order.
const std::vector<std::string>& task_names();
// The parameters of `task` with their defaults; ConfigError at `path`.task for an unknown task.
std::vector<ParamSpec> task_param_specs(const std::string& task, const std::string& path = "");
// Validates `params` (an object; the keys "task" and "name" pass unchecked), fills defaults and
// generates the sample. Config problems throw ConfigError naming `path`.<key>; a target too
// small for the task throws Error.
TaskSample make_task_sample(const std::string& task, const Tokenizer& tokenizer,
                            const nlohmann::json& params, const std::string& path = "");
// `params` validated against the task's table (unknown keys, types, ranges, and the checks that
// span two keys, such as num_queries <= num_keys) with defaults filled in, without generating;
// keys in `passthrough` are copied unchecked. ConfigError names `path`.<key>.
nlohmann::json resolve_task_params(const std::string& task, const nlohmann::json& params,
                                   const std::string& path = "",
                                   const std::vector<std::string>& passthrough = {});
// The task's scorer on one output, in [0, 1].
double score_task_sample(const std::string& task, const std::string& output,
                         const TaskSample& sample);

}  // namespace kvbench
