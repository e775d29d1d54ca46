// Where the `serving` suite's requests come from, as pure logic (no model): a trace file of
// timed requests, ShareGPT-style conversations, length distributions, and Poisson arrivals cut
// at a duration. The suite tokenizes texts and draws prompt ids (serving_suite.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvbench/core/rng.h"

namespace kvbench {

// One line of a request trace.
struct TraceRequest {
  double arrival_s = 0;       // seconds since the trace's start
  std::string prompt;         // text to tokenize; empty when prompt_tokens is given
  int64_t prompt_tokens = 0;  // > 0: a prompt of this many random token ids
  int64_t output_tokens = 1;  // tokens to generate (EOS ignored)
  std::string where;          // "file:line", for later errors
};

// Reads a request trace: JSONL, one object per non-blank line, with "arrival_s" (a finite
// number >= 0, non-decreasing from line to line: the trace must be sorted), exactly one of
// "prompt" (a non-empty string) and "prompt_tokens" (an integer >= 1), and "output_tokens" (an
// integer >= 1). Other keys are ignored. Throws Error naming file:line and the key.
std::vector<TraceRequest> load_request_trace(const std::string& path);

// A conversation's first user turn and the first model reply after it.
struct Conversation {
  std::string prompt, reply;
};

struct ShareGptData {
  std::vector<Conversation> conversations;  // in file order
  int64_t entries = 0;                      // entries read
  int64_t skipped = 0;                      // entries without a user turn and a reply after it
};

// Reads ShareGPT-style conversations: a JSON list of entries (a file starting with '['), or
// one entry per line (JSONL). An entry is an object with "conversations": a list of turns
// {"from": role, "value": text}; user roles are "human" and "user", model roles "gpt",
// "assistant", "chatgpt", "bard" and "bing" (others, e.g. "system", are passed over). Throws
// Error naming the file and entry (file:line for JSONL, "file: entry N" for a list) for a
// malformed entry or turn, and for a file with no usable conversation.
ShareGptData load_sharegpt(const std::string& path);

// Lengths (prompt or output tokens) drawn from a named distribution, clamped to [min, max]:
//   uniform    every integer in [min, max] equally likely;
//   lognormal  round(exp(N(mu, sigma²))) with mu = ln(mean) − sigma²/2, so the mean before
//              clamping and rounding is `mean` (the midpoint of the range when mean is 0).
struct LengthDistribution {
  std::string name = "uniform";
  int64_t min = 1, max = 1;
  double mean = 0;  // lognormal; 0: (min + max) / 2
  double sigma = 0.5;
  int64_t draw(Rng& rng) const;
};

// "uniform", "lognormal".
const std::vector<std::string>& length_distribution_names();

// Checks a distribution; `what` names its keys in messages ("prompt_tokens" gives
// prompt_tokens_min, _max, _mean, _sigma). Throws Error naming the key and, for an unknown
// name, the valid ones.
void check_length_distribution(const LengthDistribution& d, const std::string& what);

// The arrivals at `rate` (> 0) and `burstiness` before `duration_s`: the same sequence as
// poisson_arrivals with the same seed, cut where it reaches duration_s. Throws Error when
// more than `max_count` would arrive.
std::vector<double> poisson_arrivals_until(double duration_s, double rate, uint64_t seed,
                                           int64_t max_count, double burstiness = 1.0);

}  // namespace kvbench
