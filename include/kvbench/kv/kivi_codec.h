// KIVI (Liu et al. 2024): asymmetric min-max quantization with keys per channel and values per
// token, and a full-precision window of recent tokens.
//   keys:   tokens are quantized in blocks of R (the residual length): once R tokens have
//           gathered in the full-precision buffer they are quantized, each channel in groups
//           of G consecutive tokens; so T - (T mod R) keys are quantized, the rest stay exact.
//   values: all but the last R tokens are quantized, each token in groups of G channels
//           (a sliding full-precision window).
// s = (max - min) / (2^b - 1), q = clamp(round((x - min) / s)), x^ = q s + min; scales, mins
// and the window are kept in the model dtype. R > T stores everything exactly; at T = R the
// keys are one quantized block (T - T mod R = R), as in KIVI's reference code, the values
// still exact.
// Key codes layout: when a token's packed codes are whole 32-bit words (head_dim * bits % 32
// == 0, always so for head_dim a multiple of 16) they are stored in tiles of 16 tokens, word-
// major (simd::KiviKeyTiles), so that the key kernel loads one word of 16 tokens per vector
// with no transposes; otherwise as token rows. Values: see below.
// Fused cpu attention (numerics options, bounds in docs/methods.md):
//   query_int8: per key group the channel scales fold into the query, q'_c = q_c s_c, which is
//               quantized to int8 blocks of 32 and scored against the codes with integer dot
//               products (simd::kivi_key_tile_scores on tiles, simd::channel_scores on
//               rows; head_dim a multiple of 32); false: q' stays fp32. The registry's
//               kivi-2/kivi-4 default is true; this constructor's false.
//   value_int8: values accumulated against int8 weights p s per 32-token tile (tiles at
//               multiples of 32; simd::kivi_value_sum on AVX-512 VNNI, G a multiple of 16,
//               head_dim of 128 / bits); false or elsewhere: exactly.
// Value layout (head_dim a multiple of 128 / bits): codes in quads of 4 tokens whose 32-bit
// words hold 4 tokens' codes of 16 (8 / bits) channels, scales and mins in tiles of 16 tokens
// ([group][token]), as simd::KiviValueTiles describes: the value kernels read them with one
// load per 4 tokens and 64 (2-bit) channels and no transposes. Other head_dims: one row per
// token. Bytes are the same either way (a partial last quad or tile counts only its tokens).
#pragma once

#include "kvbench/kv/codec.h"

namespace kvbench {

class KiviCodec final : public Codec {
 public:
  KiviCodec(int bits, int64_t group, int64_t residual, at::ScalarType model_dtype,
            bool query_int8 = false, bool value_int8 = false);
  std::string name() const override { return "kivi"; }
  nlohmann::json params() const override;
  std::unique_ptr<TokenStore> make_key_store(int64_t kv_heads, int64_t head_dim) const override;
  std::unique_ptr<TokenStore> make_value_store(int64_t kv_heads, int64_t head_dim) const override;
  StorageBytes nominal_bytes(int64_t tokens, int64_t kv_heads, int64_t head_dim) const override;
  at::Tensor max_error(const at::Tensor& row, bool is_key, double store_amax) const override;

 private:
  int bits_;
  int64_t group_, residual_;
  at::ScalarType dtype_;
  bool query_int8_, value_int8_;
};

}  // namespace kvbench
