// The byte-level BPE tokenizer that `kvbench make-model` writes next to the tiny presets, so a
// made model directory is complete (Tokenizer::load works on it like on a real checkpoint).
// Ids: 0 <|pad|>, 1 <|begin_of_text|> (BOS), 2 <|end_of_text|> (EOS), 3-7 the llama3 and chatml
// chat tokens, 8-263 the 256 byte symbols, then merges learned by a small deterministic BPE
// trainer on a fixed built-in English text, up to `vocab_size` ids. Any text encodes (bytes
// always have a symbol); the merges only make English shorter.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace kvbench {

// tokenizer.json content; vocab_size must leave room for the specials and bytes (>= 264).
nlohmann::json tiny_tokenizer_json(int vocab_size);
// tokenizer_config.json content (bos/eos tokens, add_bos_token).
nlohmann::json tiny_tokenizer_config();
// Writes tokenizer.json and tokenizer_config.json into `dir` (atomically).
void write_tiny_tokenizer(const std::string& dir, int vocab_size);

}  // namespace kvbench
