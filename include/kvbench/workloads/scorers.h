// Per-sample scorers of the accuracy suite, each in [0, 1], following the reference
// implementations of LongBench (metrics.py) and RULER (string_match_all / part) so kvbench's
// numbers compare with published ones. Where a metric takes several references, the best one
// counts (LongBench: max over answers).
#pragma once

#include <string>
#include <vector>

namespace kvbench {

// LongBench's normalize_answer: lowercase, drop ASCII punctuation, drop the articles a/an/the,
// collapse whitespace.
std::string normalize_answer(const std::string& text);
// Whitespace-separated tokens of normalize_answer(text).
std::vector<std::string> normalized_tokens(const std::string& text);

// 1 when the normalized prediction equals a normalized reference.
double exact_match(const std::string& prediction, const std::vector<std::string>& references);
// 1 when a normalized reference occurs inside the normalized prediction.
double substring_match(const std::string& prediction, const std::vector<std::string>& references);
// RULER: the fraction of references found (case-insensitively) in the prediction.
double string_match_all(const std::string& prediction, const std::vector<std::string>& references);
// RULER: 1 when any reference is found (case-insensitively) in the prediction.
double string_match_part(const std::string& prediction, const std::vector<std::string>& references);
// LongBench qa_f1_score: token F1 over normalized tokens (multiset overlap), best reference.
double token_f1(const std::string& prediction, const std::vector<std::string>& references);
// Rouge-L as LongBench computes it (the `rouge` package): over lower-cased whitespace tokens,
// P = LCS / |prediction|, R = LCS / |reference|, beta = P / R,
// F = (1 + beta^2) R P / (R + beta^2 P); best reference.
double rouge_l(const std::string& prediction, const std::vector<std::string>& references);
// LongBench code_sim_score: the first prediction line that is not a comment or code fence,
// compared with the reference by Levenshtein ratio (1 - indel distance / total length, a
// substitution costing 2), as fuzz.ratio / 100.
double edit_similarity(const std::string& prediction, const std::vector<std::string>& references);
// LongBench classification_score: the classes named in the prediction (dropping those that are
// only parts of the reference), 1 / their count when the reference is among them.
double classification_score(const std::string& prediction, const std::string& reference,
                            const std::vector<std::string>& all_classes);
// LongBench count_score: the share of integers in the prediction equal to the reference count.
double count_score(const std::string& prediction, const std::string& reference);
// LongBench retrieval_score: the share of integers in the prediction equal to the paragraph
// number in the reference ("Paragraph 12").
double retrieval_score(const std::string& prediction, const std::string& reference);

// Levenshtein ratio used by edit_similarity, in [0, 1].
double levenshtein_ratio(const std::string& a, const std::string& b);

}  // namespace kvbench
