// Small string helpers shared by config validation and table output.
#pragma once

#include <string>
#include <vector>

namespace kvbench {

// Edit distance (insertions, deletions, substitutions), for "did you mean" hints.
size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `word`, or "" when none is close enough to be a plausible typo.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);
std::string join(const std::vector<std::string>& parts, const std::string& sep);
// Every occurrence of `from` (non-empty) replaced by `to`, left to right, non-overlapping.
std::string replace_all(const std::string& text, const std::string& from, const std::string& to);
// "1.50 GiB", "512 B": binary units, for people; reports keep raw byte counts.
std::string format_bytes(double bytes);
// Fixed-point number with `digits` decimals.
std::string format_fixed(double value, int digits);
// Whether `text` is well-formed UTF-8 (no overlong forms, surrogates or code points past
// U+10FFFF): what JSON text, and so a report, can hold.
bool is_valid_utf8(const std::string& text);
// `text` with each byte that is not part of well-formed UTF-8 written as \xNN, so a message
// quoting a file's bytes can go into a report and still say which bytes they were.
std::string printable_utf8(const std::string& text);

}  // namespace kvbench
