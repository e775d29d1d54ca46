// Per-sample scorers of the accuracy suite, each in [0, 1], following the reference
// implementations of LongBench (metrics.py) and RULER (string_match_all / part) so kvbench's
// numbers compare with published ones. Where a metric takes several references, the best one
// counts (LongBench: max over answers).
#pragma once

#include <string>
#include <vector>

namespace kvbench {

// Text is UTF-8 and handled as the references' Python strings are: Unicode case (ICU's full
// lowercase mapping, as str.lower), Unicode whitespace (str.split), Unicode word characters and
// digits (re's \w, \d), lengths in code points.

// LongBench's normalize_answer: lowercase, drop ASCII punctuation, replace each word (a run of
// word characters) that is a/an/the by a space, collapse whitespace.
std::string normalize_answer(const std::string& text);
// Whitespace-separated tokens of normalize_answer(text).
std::vector<std::string> normalized_tokens(const std::string& text);

// 1 when the normalized prediction equals a normalized reference.
double exact_match(const std::string& prediction, const std::vector<std::string>& references);
// 1 when a normalized reference occurs inside the normalized prediction.
double substring_match(const std::string& prediction, const std::vector<std::string>& references);
// RULER: the fraction of references found (case-insensitively) in the prediction.
double string_match_all(const std::string& prediction, const std::vector<std::string>& references);
// RULER (its QA tasks): 1 when any reference is found (case-insensitively) in the prediction.
double string_match_part(const std::string& prediction, const std::vector<std::string>& references);
// LongBench qa_f1_score: token F1 over normalized tokens (multiset overlap), best reference.
double token_f1(const std::string& prediction, const std::vector<std::string>& references);
// Rouge-L F as LongBench computes it (the `rouge` package, 1.0.1): no lowercasing; sentences
// cut at '.', words split at spaces; for every reference sentence and prediction sentence the
// words of their longest common subsequence (as the package rebuilds it), and LCS = the
// distinct words in all of them; P = LCS / distinct prediction words, R = LCS / distinct
// reference words, F = 2PR / (P + R + 1e-8); 0 when either side has no sentence. Best reference.
double rouge_l(const std::string& prediction, const std::vector<std::string>& references);
// LongBench code_sim_score: leading newlines dropped, the first line containing no '`', '#' or
// "//" (else ""), scored fuzz_ratio / 100 against the reference.
double edit_similarity(const std::string& prediction, const std::vector<std::string>& references);
// LongBench classification_score: the classes named in the prediction, dropping those that are
// only parts of the reference as the reference does it (walking the list while removing, so
// the entry after a removed one stays), 1 / their count when the reference is among them.
double classification_score(const std::string& prediction, const std::string& reference,
                            const std::vector<std::string>& all_classes);
// LongBench count_score: the share of integers in the prediction equal to the reference count.
double count_score(const std::string& prediction, const std::string& reference);
// LongBench retrieval_score: the share of integers in the prediction equal to the number after
// the reference's first `mark` (0 without one): "Paragraph ", or "段落" as LongBench's
// retrieval_zh_score reads passage_retrieval_zh.
double retrieval_score(const std::string& prediction, const std::string& reference,
                       const std::string& mark = "Paragraph ");
// The digits after the first `mark` followed by one in `reference` ("" without one: LongBench's
// scorer fails on such a row, kvbench's loader refuses it).
std::string paragraph_id(const std::string& reference, const std::string& mark);

// difflib.SequenceMatcher(None, a, b).ratio() over code points: 2 M / (|a| + |b|), M the
// characters of its matching blocks (longest first, recursively on both sides; in a `b` of
// 200 or more, characters more than 1% of it start no match), 1 for two empty strings.
double sequence_ratio(const std::string& a, const std::string& b);
// fuzzywuzzy's fuzz.ratio as LongBench's requirements install it (without python-Levenshtein:
// difflib's matcher): 100 for equal strings, 0 when one is empty, else
// round(100 * sequence_ratio), halves to even.
double fuzz_ratio(const std::string& a, const std::string& b);

}  // namespace kvbench
