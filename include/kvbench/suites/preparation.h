// The prepare step: codecs fitted to the model (low-rank bases, SVD factors) get their data
// here, once, before any timed work. Calibration prompts run through the model with a
// full-precision cache that records every layer's keys (RoPE applied) and values.
#pragma once

#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "kvbench/kv/codec.h"
#include "kvbench/model/tokenizer.h"
#include "kvbench/model/transformer.h"

namespace kvbench {

struct PreparedCodec {
  std::shared_ptr<const Codec> codec;
  // What the report says about the step (null when the codec needed none):
  // {"timed": false, "duration_s", "inputs", "calibration": {"prompts", "tokens_per_prompt",
  //  "tokens", "source", "seed"} or null}
  nlohmann::json report;
};

// The calibration prompts `spec` asks for: `prompts` lists of `tokens` ids. "text" needs the
// tokenizer; "random" draws ids uniformly from [0, vocab). Seeded, deterministic.
std::vector<std::vector<int64_t>> calibration_prompts(const CalibrationSpec& spec, int64_t vocab,
                                                      const Tokenizer* tokenizer);
// Runs the prompts through `model` with an fp32 full cache and returns each layer's keys and
// values as the cache received them: {keys, values}, per layer [kv_heads, total tokens, d].
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> capture_kv(
    const Transformer& model, const std::vector<std::vector<int64_t>>& prompts);
// Throws when the calibration prompts `spec` asks for cannot run on a model of config `c`
// (longer than its max_position_embeddings). `validate` checks this too, without the weights.
void check_calibration_fits(const CalibrationSpec& spec, const ModelConfig& c);
// What capture_kv holds at its peak for `spec` on a model of config `c`: every prompt's fp32
// keys and values of every layer, twice (the per-prompt pieces and their concatenation). 0
// without calibration prompts.
uint64_t calibration_capture_bytes(const CalibrationSpec& spec, const ModelConfig& c);
// `codec` prepared for `model` (unchanged, with a null report, when it needs no preparation).
// `tokenizer` may be null unless the codec calibrates on text.
PreparedCodec prepare_codec(std::shared_ptr<const Codec> codec, const Transformer& model,
                            const Tokenizer* tokenizer);

}  // namespace kvbench
