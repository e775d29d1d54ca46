// Hugging Face `tokenizer.json` tokenizers: the BPE model with the two pipelines real
// checkpoints use, (1) byte-level (GPT-2 / Llama-3 / Qwen: a Split regex plus ByteLevel
// pre-tokenizer, optional NFC, `ignore_merges`) and (2) sentencepiece-converted (Llama-2 /
// Mistral: Metaspace `▁` or Prepend+Replace normalizers, `<0xNN>` byte fallback). Added tokens
// (special or not) are split out of the text before normalisation, as the `tokenizers` library
// does, so "<|im_start|>" in a prompt becomes one id.
//
// Anything the file asks for that is not implemented (another model type, normalizer,
// pre-tokenizer, decoder or post-processor, a BPE option) is rejected when loading with a
// one-line kvbench::Error naming it: "tokenizer: <file>: unsupported tokenizer model:
// WordPiece". A tokenizer never silently tokenises differently from the reference.
//
// No libtorch here: ids are plain int32 vectors.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvbench {

class Tokenizer {
 public:
  // Reads `dir`/tokenizer.json plus, when present, tokenizer_config.json (bos/eos tokens;
  // add_bos_token/add_eos_token, which replace the file's template when either is named) and
  // generation_config.json (bos_token_id, eos_token_id: int or list).
  static Tokenizer load(const std::string& dir);
  // The same from parsed files; null/empty configs stand for absent files. `source` names the
  // tokenizer in errors.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json,
                             const nlohmann::json& tokenizer_config = nullptr,
                             const nlohmann::json& generation_config = nullptr,
                             const std::string& source = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `text` must be valid UTF-8. With `add_special_tokens` the post-processor's template is
  // applied (e.g. BOS for Llama-3 files with TemplateProcessing); the default matches
  // `tok.encode(text, add_special_tokens=False)`. Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // Ids back to text (through the file's decoder), as the `tokenizers` library decodes;
  // transformers' clean_up_tokenization_spaces (" ." -> ".") is not applied, so byte-level
  // files round-trip exactly. Out-of-range ids throw.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // The ids encode(text, true) puts before and after the text (its template's special tokens,
  // e.g. BOS before; EOS after with add_eos_token).
  const std::vector<int32_t>& special_prefix() const;
  const std::vector<int32_t>& special_suffix() const;

  // One more than the largest id (model vocabulary and added tokens).
  int64_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string as stored in the file (byte-level symbols, `▁`, "<0x0A>", ...).
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

  // From tokenizer_config.json's bos_token, else generation_config.json's bos_token_id.
  std::optional<int32_t> bos_id() const;
  // generation_config.json's eos_token_id (int or list), else tokenizer_config's eos_token.
  const std::vector<int32_t>& eos_ids() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvbench
