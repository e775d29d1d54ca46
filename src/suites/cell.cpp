#include "kvbench/suites/cell.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "kvbench/core/environment.h"
#include "kvbench/core/error.h"
#include "kvbench/kv/method_registry.h"
#include "kvbench/suites/suite_registry.h"

namespace kvbench {

uint64_t fnv1a64(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

// Files up to this size are hashed whole; larger ones (model weights) by their size, their
// first 1 MiB (a safetensors header with every tensor's name, dtype, shape and offsets) and
// 16 evenly spaced 64 KiB samples, so fingerprinting 16 GB takes milliseconds and retrained
// weights of the same shapes still differ.
constexpr uint64_t kWholeFileBytes = 4ull << 20;

std::string hex64(uint64_t h) {
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

std::string read_at(std::ifstream& in, uint64_t offset, uint64_t n) {
  std::string buf(n, '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(buf.data(), static_cast<std::streamsize>(n));
  buf.resize(static_cast<size_t>(in.gcount()));
  return buf;
}

std::string bytes_fingerprint(const std::filesystem::path& path);

// A directory: its regular files' (not its subdirectories'), one level only.
std::string file_fingerprint(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return bytes_fingerprint(path);
  std::vector<std::string> parts;
  for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
    if (e.is_regular_file())
      parts.push_back(e.path().filename().string() + "=" + bytes_fingerprint(e.path()));
  }
  std::sort(parts.begin(), parts.end());
  std::string all;
  for (const auto& p : parts) all += p + ";";
  return hex64(fnv1a64(all));
}

std::string bytes_fingerprint(const std::filesystem::path& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return "missing";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "unreadable";
  std::string bytes = std::to_string(size) + ":";
  if (size <= kWholeFileBytes) {
    bytes += read_at(in, 0, size);
  } else {
    bytes += read_at(in, 0, 1ull << 20);
    for (uint64_t i = 0; i < 16; ++i)
      bytes += read_at(in, (size - (64ull << 10)) / 15 * i, 64ull << 10);
  }
  return hex64(fnv1a64(bytes));
}

// The model's files a result depends on: config, tokenizer and weight files.
nlohmann::json model_fingerprint(const std::string& dir) {
  nlohmann::json files = nlohmann::json::object();
  std::error_code ec;
  if (dir.empty() || !std::filesystem::is_directory(dir, ec)) return files;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".json"))
      files[name] = file_fingerprint(e.path());
  }
  return files;
}

// Data files named by a suite's parameters.
nlohmann::json data_fingerprints(const nlohmann::json& params) {
  nlohmann::json files = nlohmann::json::object();
  for (const InputPath& in : input_paths(params)) files[in.key] = file_fingerprint(in.path);
  return files;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

std::vector<InputPath> input_paths(const nlohmann::json& params) {
  std::vector<InputPath> out;
  for (const auto& [key, value] : params.items()) {
    const bool file = ends_with(key, "_file"), dir = ends_with(key, "_dir");
    if ((file || dir) && value.is_string() && !value.get<std::string>().empty())
      out.push_back({key, value.get<std::string>(), dir});
  }
  return out;
}

std::vector<Cell> expand_cells(const RunSpec& spec) {
  std::optional<nlohmann::json> model_files;  // computed on first use
  // The variables that choose the code a cell runs on the run's device (environment.h).
  const nlohmann::json code_path =
      applicable_code_path(code_path_overrides(), spec.device, spec.attention);
  std::vector<Cell> cells;
  std::map<std::string, std::string> seen;  // id -> where it came from
  for (size_t s = 0; s < spec.suites.size(); ++s) {
    for (size_t m = 0; m < spec.methods.size(); ++m) {
      Cell c;
      c.suite_index = s;
      c.method_index = m;
      c.suite = spec.suites[s].name;
      c.params = spec.suites[s].params;
      c.method = spec.methods[m];
      // Everything that changes what the cell measures. nlohmann::json objects keep keys
      // sorted, so dump() is canonical. Model and data files enter by content fingerprint
      // (only when there are any, so other cells keep their ids), so a changed input never
      // reuses an old result under --resume.
      const bool needs_model = find_suite(c.suite).needs_model;
      nlohmann::json identity = {
          {"suite", c.suite},
          {"params", c.params},
          {"method", c.method},
          {"device", spec.device},
          {"attention", spec.attention},
          {"threads", spec.threads},
          {"model",
           needs_model ? spec.resolved.value("model", nlohmann::json()) : nlohmann::json()}};
      nlohmann::json inputs = nlohmann::json::object();
      // A preset's weights are named by the preset and seed (in `model`): a checkpoint at its
      // path is checked at load to be that preset's, so ids do not change once the preset is
      // written on first use (or --shard would split the cells differently before and after).
      if (needs_model && !spec.model.path.empty() && spec.model.preset.empty()) {
        if (!model_files) model_files = model_fingerprint(spec.model.path);
        if (!model_files->empty()) inputs["model_files"] = *model_files;
      }
      if (nlohmann::json data = data_fingerprints(c.params); !data.empty())
        inputs["data_files"] = data;
      if (!inputs.empty()) identity["inputs"] = inputs;
      auto hex_of = [](const nlohmann::json& j) {
        char hex[17];
        std::snprintf(hex, sizeof(hex), "%016llx",
                      static_cast<unsigned long long>(fnv1a64(j.dump())));
        return std::string(hex);
      };
      // The cell's seed (its intervals' resampling, the kernels suite's random tensors; the
      // model suites' prompts and corpora come from the run's seed) comes from what it
      // measures...
      c.seed = fnv1a64(std::to_string(spec.seed) + ":" + hex_of(identity));
      // Not the shard: containers of one job array split the cells alike whatever their
      // environments.
      nlohmann::json shard_identity = identity;
      // ...and its id also tells the GPU path's code on the CPU (which measures other numbers)
      // from the plain paged path's.
      if (spec.attention == "paged" && spec.device == "cpu" && paged_kernel_path_on_cpu())
        identity["paged_path"] = "kernels";
      // So do the variables that choose the code that runs (a decode loop, the SIMD level):
      // --resume must not reuse a cell measured under others.
      if (!code_path.empty()) identity["code_path"] = code_path;
      const std::string prefix = c.suite + "." + c.method["name"].get<std::string>() + ".";
      c.id = prefix + hex_of(identity);
      if (spec.threads_auto) shard_identity["threads"] = "auto";
      c.shard_hash = fnv1a64(prefix + hex_of(shard_identity));
      const std::string where =
          "suites[" + std::to_string(s) + "] x methods[" + std::to_string(m) + "]";
      const SuiteInfo& info = find_suite(c.suite);
      if (info.check_method) {
        try {
          info.check_method(c.params, c.method, spec.device);
        } catch (const ConfigError&) {
          throw;
        } catch (const Error& e) {
          throw ConfigError(where, e.what());
        }
      }
      auto [it, inserted] = seen.emplace(c.id, where);
      if (!inserted) {
        throw ConfigError("suites",
                          "cells " + it->second + " and " + where + " are identical; remove one");
      }
      cells.push_back(std::move(c));
    }
  }
  return cells;
}

Shard parse_shard(const std::string& text) {
  const size_t slash = text.find('/');
  Shard s;
  try {
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    // Digits only: std::stoi would take " 1", "+1" and "-0".
    if (text.find_first_not_of("0123456789/") != std::string::npos || slash == 0 ||
        slash + 1 == text.size())
      throw std::invalid_argument("not digits");
    size_t used = 0;
    s.index = std::stoi(text.substr(0, slash), &used);
    if (used != slash) throw std::invalid_argument("index");
    const std::string n = text.substr(slash + 1);
    s.count = std::stoi(n, &used);
    if (used != n.size()) throw std::invalid_argument("count");
  } catch (const std::exception&) {
    throw ConfigError("--shard", "expected i/n (e.g. 0/4), got '" + text + "'");
  }
  if (s.count < 1 || s.index < 0 || s.index >= s.count) {
    throw ConfigError("--shard", "expected i/n with 0 <= i < n, got '" + text + "'");
  }
  return s;
}

std::vector<Cell> select_shard(const std::vector<Cell>& cells, Shard shard) {
  std::vector<Cell> out;
  for (const auto& c : cells) {
    if (c.shard_hash % static_cast<uint64_t>(shard.count) == static_cast<uint64_t>(shard.index)) {
      out.push_back(c);
    }
  }
  return out;
}

}  // namespace kvbench
