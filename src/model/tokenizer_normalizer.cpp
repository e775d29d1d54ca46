// Normalizers: Unicode normal forms through ICU, plus the Prepend/Replace pair that
// sentencepiece-converted (Llama-2 style) files use to turn spaces into "▁".
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "kvbench/core/text.h"
#include "tokenizer_parts.h"

namespace kvbench::tok {
namespace {

const icu::Normalizer2* unicode_normalizer(const std::string& type, const std::string& source) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  if (type == "NFC") n = icu::Normalizer2::getNFCInstance(status);
  if (type == "NFD") n = icu::Normalizer2::getNFDInstance(status);
  if (type == "NFKC") n = icu::Normalizer2::getNFKCInstance(status);
  if (type == "NFKD") n = icu::Normalizer2::getNFKDInstance(status);
  if (n == nullptr || U_FAILURE(status)) fail(source, "cannot load ICU data for " + type);
  return n;
}

}  // namespace

Normalizer::Normalizer(const json& config, const std::string& source) {
  if (!config.is_null()) add(config, source);
}

void Normalizer::add(const json& config, const std::string& source) {
  const std::string type = config.value("type", "");
  if (type == "Sequence") {
    const json& children = config.at("normalizers");
    if (!children.is_array())
      fail(source, "normalizer.normalizers (a Sequence's): expected an array, got " +
                       std::string(children.type_name()));
    for (const json& child : children) add(child, source);
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    Step step;
    step.kind = Kind::kUnicode;
    step.icu = unicode_normalizer(type, source);
    steps_.push_back(std::move(step));
  } else if (type == "Prepend") {
    Step step;
    step.kind = Kind::kPrepend;
    step.a = config.at("prepend").get<std::string>();
    steps_.push_back(std::move(step));
  } else if (type == "Replace") {
    Step step;
    step.kind = Kind::kReplace;
    const json& pattern = config.at("pattern");
    step.b = config.at("content").get<std::string>();
    if (pattern.contains("String")) {
      step.a = pattern.at("String").get<std::string>();
    } else if (pattern.contains("Regex")) {
      step.regex = std::make_shared<Regex>(pattern.at("Regex").get<std::string>(), false, source);
    } else {
      fail(source, "unsupported normalizer: Replace without String or Regex pattern");
    }
    steps_.push_back(std::move(step));
  } else {
    fail(source, "unsupported normalizer: " + (type.empty() ? config.dump() : type) +
                     " (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence)");
  }
}

void Normalizer::apply(std::string& text) const {
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kUnicode: {
        const auto* n = static_cast<const icu::Normalizer2*>(step.icu);
        UErrorCode status = U_ZERO_ERROR;
        // ASCII-only text is in every normal form; most inputs skip ICU entirely.
        bool ascii = true;
        for (char c : text) ascii &= static_cast<unsigned char>(c) < 0x80;
        if (ascii) break;
        std::string out;
        icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
        n->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink,
                         nullptr, status);
        if (U_FAILURE(status)) fail("normalizer", u_errorName(status));
        text = std::move(out);
        break;
      }
      case Kind::kPrepend:
        if (!text.empty()) text = step.a + text;  // as `tokenizers`: never on empty text
        break;
      case Kind::kReplace:
        if (step.regex) {
          std::vector<std::pair<size_t, size_t>> hits;
          step.regex->find_all(text, hits);
          std::string out;
          size_t pos = 0;
          for (const auto& [b, e] : hits) {
            out.append(text, pos, b - pos);
            out += step.b;
            pos = e;
          }
          out.append(text, pos, std::string::npos);
          text = std::move(out);
        } else {
          text = replace_all(text, step.a, step.b);
        }
        break;
    }
  }
}

}  // namespace kvbench::tok
