// JSON Lines input: one JSON object a line, as the trace, ShareGPT, LongBench/RULER, prompts and
// training-log files hold them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace kvbench {

// Calls on_row(row, line) for every line of `path` that is not blank (only spaces, tabs or CR),
// in file order; `line` is the 1-based line number. Every such line must be a JSON object.
// Throws kvbench::Error, each message led by "<context>: " when `context` is not empty:
//   "cannot read <path>"                              the file cannot be opened;
//   "<path>:<line>: not JSON (<parser message>)"      a line does not parse;
//   "<path>:<line>: expected a JSON object, got <type>"  a line is another JSON value.
// Errors thrown by on_row pass through unchanged.
void read_jsonl(const std::filesystem::path& path,
                const std::function<void(const nlohmann::json& row, int64_t line)>& on_row,
                const std::string& context = "");

// "<path>:<line>", the place read_jsonl's errors name, for the callers' own row errors.
std::string jsonl_where(const std::filesystem::path& path, int64_t line);

// Throws Error in the one wording of a row's bad field, `at` being where the row is:
//   "<at>: \"<key>\": missing (expected <expected>)"      the row has no such key;
//   "<at>: \"<key>\": expected <expected>, got <value>"  it has another value (cut at 60 chars).
[[noreturn]] void throw_field_error(const nlohmann::json& row, const std::string& key,
                                    const std::string& expected, const std::string& at);

}  // namespace kvbench
