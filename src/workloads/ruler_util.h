// Helpers shared by the synthetic task generators (private to src/workloads).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_set>
#include <vector>

#include "kvbench/core/rng.h"
#include "kvbench/model/tokenizer.h"

namespace kvbench::workloads_detail {

// RULER's "repeat" noise line, "The grass is green. ... There and back again.", is the unit of
// filler split into its five sentences, so the length search can stop within a sentence
// (a few tokens) of the target instead of within a line. Sentence i is i % 5.
const std::string& noise_sentence(int64_t i);
// Whether sentence i ends its noise line.
inline bool noise_ends_line(int64_t i) { return i % 5 == 4; }

// Joins filler: a unit continues the current line after a space unless the previous unit ended
// its line; an inserted line (a needle, a statement) always stands on a line of its own.
class FillerText {
 public:
  void line(const std::string& text);
  void unit(const std::string& text, bool ends_line);
  const std::string& str() const { return text_; }

 private:
  std::string text_;
  const char* separator_ = "";  // before the next unit
};

// encode(text, add_special_tokens=true).size(): what the model will be fed.
int64_t count_tokens(const Tokenizer& tokenizer, const std::string& text);

// The largest filler amount n >= 0 with length_with(n) <= target_tokens, by doubling then
// bisection (the length grows with n). Throws Error naming `task` when even n = 0 does not fit.
int64_t fit_filler(const std::function<int64_t(int64_t)>& length_with, int64_t target_tokens,
                   const std::string& task);

// An independent stream of the sample's randomness, so drawing more of one thing (e.g. filler
// needles while searching for the length) never changes another (the answer).
Rng substream(uint64_t seed, uint64_t stream);

// A decimal number of exactly `digits` digits (no leading zero).
std::string random_digits(Rng& rng, int digits);
// A version-4 UUID in canonical lower-case form: 8-4-4-4-12 hex digits.
std::string random_uuid(Rng& rng);
// "adjective-noun" from the built-in word lists (RULER's word keys).
std::string random_word_pair(Rng& rng);
// Draws with `draw` until the result is not in `used`, then records it there.
std::string draw_unique(std::unordered_set<std::string>& used,
                        const std::function<std::string()>& draw);

// Fisher-Yates with the kvbench Rng (std::shuffle is implementation-defined).
template <typename T>
void shuffle(std::vector<T>& items, Rng& rng) {
  for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[rng.below(i)]);
}

// Filler units before an item at `depth` in [0, 1] of n units.
int64_t units_before(double depth, int64_t n);
// Where a needle placed with units_before(depth, n) landed, as a fraction of the n units
// (0 when there are none): TaskSample::needle_depth.
double depth_fraction(double depth, int64_t n);
// "<task>-<seed>-<target>" plus "-<depth, 2 decimals>" when depth >= 0.
std::string sample_id(const std::string& task, uint64_t seed, int64_t target_tokens,
                      double depth = -1);

}  // namespace kvbench::workloads_detail
