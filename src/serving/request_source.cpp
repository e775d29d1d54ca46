#include "kvbench/serving/request_source.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kvbench/core/error.h"
#include "kvbench/core/json_text.h"
#include "kvbench/core/jsonl.h"
#include "kvbench/serving/serving_loop.h"

namespace kvbench {

using nlohmann::json;

namespace {

// Calls fn(object, "file:line") for every non-blank line; each must be a JSON object.
template <class Fn>
void for_each_json_line(const std::string& path, const std::string& what, Fn&& fn) {
  read_jsonl(
      path, [&](const json& row, int64_t line) { fn(row, jsonl_where(path, line)); }, what);
}

// A request's lengths: at most 2^24 tokens (the config's bound on lengths), so that a typo
// fails here, naming its line, before a prompt of that many ids is made.
int64_t positive_integer(const json& row, const char* key, const std::string& at) {
  constexpr int64_t kMaxTokens = int64_t{1} << 24;
  if (!row.contains(key) || !row[key].is_number_integer() || row[key].get<int64_t>() < 1 ||
      row[key].get<int64_t>() > kMaxTokens)
    throw_field_error(row, key, "an integer in [1, 16777216]", "trace_file: " + at);
  return row[key].get<int64_t>();
}

bool is_user(const std::string& role) { return role == "human" || role == "user"; }
bool is_model(const std::string& role) {
  return role == "gpt" || role == "assistant" || role == "chatgpt" || role == "bard" ||
         role == "bing";
}

// The first user turn and the first model reply after it; false when there is none.
bool parse_entry(const json& entry, const std::string& at, Conversation& out) {
  KVB_CHECK(entry.is_object(), "sharegpt_file: ", at, ": expected an object, got ",
            entry.type_name());
  if (!entry.contains("conversations") || !entry["conversations"].is_array()) {
    throw_field_error(entry, "conversations",
                      "a list of turns [{\"from\": ..., \"value\": ...}, ...]",
                      "sharegpt_file: " + at);
  }
  const json& turns = entry["conversations"];
  bool have_prompt = false;
  for (size_t i = 0; i < turns.size(); ++i) {
    const json& t = turns[i];
    const std::string ti = at + ": turn " + std::to_string(i);
    KVB_CHECK(t.is_object() && t.contains("from") && t["from"].is_string() && t.contains("value") &&
                  t["value"].is_string(),
              "sharegpt_file: ", ti, ": expected {\"from\": string, \"value\": string}, got ",
              brief_json(t, 80));
    const std::string role = t["from"];
    if (!have_prompt && is_user(role)) {
      out.prompt = t["value"];
      have_prompt = true;
    } else if (have_prompt && is_model(role)) {
      out.reply = t["value"];
      return true;
    }
  }
  return false;
}

}  // namespace

std::vector<TraceRequest> load_request_trace(const std::string& path) {
  std::vector<TraceRequest> out;
  for_each_json_line(path, "trace_file", [&](const json& row, const std::string& at) {
    TraceRequest r;
    r.where = at;
    const json* a = row.contains("arrival_s") ? &row["arrival_s"] : nullptr;
    // Bounded so that a request's latencies (token times minus its arrival) keep their
    // precision: at 1e7 s (~4 months) a double still resolves ~2 ns. (Seconds from the trace's
    // start: absolute Unix times would also have the replay wait for them.)
    if (!a || !a->is_number() || !std::isfinite(a->get<double>()) || a->get<double>() < 0 ||
        a->get<double>() > 1e7)
      throw_field_error(row, "arrival_s", "seconds from the trace's start, in [0, 1e7]",
                        "trace_file: " + at);
    r.arrival_s = a->get<double>();
    if (!out.empty()) {
      KVB_CHECK(r.arrival_s >= out.back().arrival_s, "trace_file: ", at, ": \"arrival_s\" ",
                r.arrival_s, " is before the previous line's ", out.back().arrival_s,
                " (a trace must be sorted by arrival time)");
    }
    const bool text = row.contains("prompt"), count = row.contains("prompt_tokens");
    KVB_CHECK(text != count, "trace_file: ", at,
              ": give exactly one of \"prompt\" (text) and \"prompt_tokens\" (a length)");
    if (text) {
      if (!row["prompt"].is_string() || row["prompt"].get<std::string>().empty())
        throw_field_error(row, "prompt", "a non-empty string", "trace_file: " + at);
      r.prompt = row["prompt"];
    } else {
      r.prompt_tokens = positive_integer(row, "prompt_tokens", at);
    }
    r.output_tokens = positive_integer(row, "output_tokens", at);
    out.push_back(std::move(r));
  });
  KVB_CHECK(!out.empty(), "trace_file: ", path, " has no requests");
  return out;
}

ShareGptData load_sharegpt(const std::string& path) {
  ShareGptData d;
  auto add = [&](const json& entry, const std::string& at) {
    ++d.entries;
    Conversation c;
    if (parse_entry(entry, at, c)) {
      d.conversations.push_back(std::move(c));
    } else {
      ++d.skipped;
    }
  };
  std::ifstream in(path);
  KVB_CHECK(in.good(), "sharegpt_file: cannot read ", path);
  // A UTF-8 byte-order mark (editors on Windows write one) comes before the list's '['.
  char bom[3] = {0, 0, 0};
  in.read(bom, 3);
  const bool has_bom = in.gcount() == 3 && static_cast<unsigned char>(bom[0]) == 0xEF &&
                       static_cast<unsigned char>(bom[1]) == 0xBB &&
                       static_cast<unsigned char>(bom[2]) == 0xBF;
  in.clear();
  in.seekg(has_bom ? 3 : 0);
  char first = 0;
  while (in.get(first) && std::isspace(static_cast<unsigned char>(first))) {
  }
  if (first == '[') {
    in.clear();
    in.seekg(has_bom ? 3 : 0);
    json all;
    try {
      all = json::parse(in, json_depth_limit("sharegpt_file: " + path));
    } catch (const json::exception& e) {
      throw Error("sharegpt_file: " + path + ": not JSON (" + json_error_text(e) + ")");
    }
    for (size_t i = 0; i < all.size(); ++i) add(all[i], path + ": entry " + std::to_string(i));
  } else {
    in.close();
    for_each_json_line(path, "sharegpt_file", add);
  }
  KVB_CHECK(!d.conversations.empty(), "sharegpt_file: ", path, ": none of its ", d.entries,
            " entries has a user turn (\"human\") followed by a reply (\"gpt\")");
  return d;
}

const std::vector<std::string>& length_distribution_names() {
  static const std::vector<std::string> names = {"uniform", "lognormal"};
  return names;
}

void check_length_distribution(const LengthDistribution& d, const std::string& what) {
  const auto& names = length_distribution_names();
  if (std::find(names.begin(), names.end(), d.name) == names.end()) {
    std::string valid;
    for (const auto& n : names) valid += (valid.empty() ? "" : ", ") + n;
    throw Error("serving: length_distribution \"" + d.name + "\" is unknown; valid: " + valid);
  }
  KVB_CHECK(d.min >= 1, "serving: ", what, "_min must be >= 1, got ", d.min);
  KVB_CHECK(d.max >= d.min, "serving: ", what, "_max (", d.max, ") must be >= ", what, "_min (",
            d.min, ")");
  if (d.name == "lognormal") {
    KVB_CHECK(d.mean == 0 ||
                  (d.mean >= static_cast<double>(d.min) && d.mean <= static_cast<double>(d.max)),
              "serving: ", what, "_mean (", d.mean, ") must be 0 (the midpoint) or within [", what,
              "_min, ", what, "_max] = [", d.min, ", ", d.max, "]");
    KVB_CHECK(d.sigma > 0 && std::isfinite(d.sigma), "serving: ", what,
              "_sigma must be > 0 for the lognormal distribution, got ", d.sigma);
  }
}

int64_t LengthDistribution::draw(Rng& rng) const {
  if (name == "uniform") {
    return min + static_cast<int64_t>(rng.below(static_cast<uint64_t>(max - min + 1)));
  }
  KVB_CHECK(name == "lognormal", "serving: unknown length distribution ", name);
  const double m = mean > 0 ? mean : 0.5 * static_cast<double>(min + max);
  const double mu = std::log(m) - 0.5 * sigma * sigma;
  // Box-Muller; 1 - u is in (0, 1], so the log is finite.
  const double u1 = 1.0 - rng.uniform(), u2 = rng.uniform();
  const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  const double x = std::round(std::exp(mu + sigma * z));
  return static_cast<int64_t>(std::clamp(x, static_cast<double>(min), static_cast<double>(max)));
}

std::vector<double> poisson_arrivals_until(double duration_s, double rate, uint64_t seed,
                                           int64_t max_count, double burstiness) {
  KVB_CHECK(duration_s > 0 && std::isfinite(duration_s), "serving: duration_s must be > 0, got ",
            duration_s);
  KVB_CHECK(rate > 0 && std::isfinite(rate),
            "serving: a duration needs rates > 0 (rate 0 puts every request at time 0), got ",
            rate);
  std::vector<double> t = {0.0};
  ArrivalGaps gaps(rate, burstiness, seed);
  while (true) {
    const double next = t.back() + gaps.next();
    if (next >= duration_s) break;
    KVB_CHECK(static_cast<int64_t>(t.size()) < max_count, "serving: rate ", rate,
              " over duration_s ", duration_s, " gives more than ", max_count, " requests");
    t.push_back(next);
  }
  return t;
}

}  // namespace kvbench
