// PCRE2 wrapper for the pre-tokenizer's Split patterns. tokenizer.json regexes are written for
// Oniguruma/Rust (\p{L}, \p{N}, (?i:...), lookahead); PCRE2 in UTF + UCP mode reads them the
// same way, with one rewrite: \s and \S become \p{White_Space} / \P{White_Space}, the
// definition Rust uses, because PCRE2's UCP \s also matches U+180E (Mongolian vowel separator,
// no longer White_Space since Unicode 6.3).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

// \p{White_Space} is a binary Unicode property; PCRE2 reads those from 10.40 (its ChangeLog,
// item 14), and an older one would refuse every tokenizer with \s at load time.
#if PCRE2_MAJOR < 10 || (PCRE2_MAJOR == 10 && PCRE2_MINOR < 40)
#error "kvbench needs PCRE2 10.40 or later (\\p{White_Space}); Debian 12 ships 10.42"
#endif

#include <cstdio>

#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

pcre2_code* as_code(void* p) { return static_cast<pcre2_code*>(p); }

std::string rust_whitespace(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[++i];
      if (next == 's') {
        out += "\\p{White_Space}";
      } else if (next == 'S') {
        out += "\\P{White_Space}";
      } else {
        out += '\\';
        out += next;
      }
    } else {
      out += pattern[i];
    }
  }
  return out;
}

// The PCRE2 library loaded at run time, e.g. "10.42 2022-12-11": the headers' check above
// does not cover a program linked against an older shared library.
std::string library_version() {
  char buf[64] = {};
  if (pcre2_config(PCRE2_CONFIG_VERSION, buf) < 0) return "unknown";
  return buf;
}

bool library_reads_binary_properties(const std::string& version) {
  int major = 0, minor = 0;
  if (std::sscanf(version.c_str(), "%d.%d", &major, &minor) != 2) return true;  // cannot tell
  return major > 10 || (major == 10 && minor >= 40);
}

}  // namespace

Regex::Regex(const std::string& pattern_in, bool literal, const std::string& source)
    : source_(source) {
  const std::string pattern = literal ? pattern_in : rust_whitespace(pattern_in);
  int error = 0;
  PCRE2_SIZE offset = 0;
  // PCRE2 allows no other pattern options beside PCRE2_LITERAL but UTF.
  const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    const std::string version = library_version();
    fail(source, "cannot compile pre-tokenizer regex at offset " + std::to_string(offset) + ": " +
                     reinterpret_cast<const char*>(message) + " (PCRE2 " + version +
                     (library_reads_binary_properties(version)
                          ? ")"
                          : "; kvbench needs 10.40 or later, for \\p{White_Space})"));
  }
  code_ = code;
  // JIT is several times faster; without it (no JIT support in the build) matching still works.
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::Regex(Regex&& other) noexcept
    : code_(other.code_), jit_(other.jit_), source_(std::move(other.source_)) {
  other.code_ = nullptr;
}

Regex::~Regex() {
  if (code_ != nullptr) pcre2_code_free(as_code(code_));
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(as_code(code_), nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos <= text.size()) {
    // The caller validated the UTF-8 once for the whole input.
    const int rc = jit_ ? pcre2_jit_match(as_code(code_), subject, text.size(), pos,
                                          PCRE2_NO_UTF_CHECK, md, nullptr)
                        : pcre2_match(as_code(code_), subject, text.size(), pos, PCRE2_NO_UTF_CHECK,
                                      md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pcre2_match_data_free(md);
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      fail(source_,
           std::string("pre-tokenizer regex failed: ") + reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t begin = ov[0], end = ov[1];
    if (end == begin) {
      // Empty match: step over one code point, as the regex crate's iterator does.
      if (begin >= text.size()) break;
      size_t next = begin;
      next_code_point(text, next);
      pos = next;
      continue;
    }
    out.emplace_back(begin, end);
    pos = end;
  }
  pcre2_match_data_free(md);
}

}  // namespace kvbench::tok
