#include "kvbench/kv/gear_blocks.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kvbench/core/error.h"

namespace kvbench {
namespace {

at::Tensor round_to(const at::Tensor& x, at::ScalarType dtype) {
  return x.to(dtype).to(at::kFloat);
}

// The group width: keys G tokens, values min(G, head_dim) channels (gear_codec.h).
int64_t group_of(const GearParams& p, bool is_key, int64_t head_dim) {
  return is_key ? p.group : std::min(p.group, head_dim);
}

// Per-group parameters [kv_heads, groups, width] spread to every element [kv_heads, n, d]:
// keys repeat each token group's row over its tokens, values each channel group's value over
// its channels.
at::Tensor spread(const at::Tensor& per_group, bool is_key, int64_t group, int64_t n) {
  if (is_key) return per_group.repeat_interleave(group, 1).narrow(1, 0, n);
  return per_group.repeat_interleave(group, 2);
}

// The bit offsets of the values in a byte, 0, bits, 2 bits, ..., made where the codes are (no
// host-to-device copy).
at::Tensor shifts(int bits, at::Device device) {
  return at::arange(0, 8, bits, at::TensorOptions().dtype(at::kInt).device(device));
}

// Codes [kv_heads, n, head_dim] (integers in fp32) packed `bits` to a value, low bits first.
at::Tensor pack(const at::Tensor& codes, int bits) {
  const int64_t per_byte = 8 / bits;
  if (per_byte == 1) return codes.to(at::kByte);
  const at::Tensor grouped =
      codes.to(at::kInt).view({codes.size(0), codes.size(1), codes.size(2) / per_byte, per_byte});
  return at::bitwise_left_shift(grouped, shifts(bits, codes.device())).sum(-1).to(at::kByte);
}

at::Tensor unpack(const at::Tensor& packed, int bits) {
  if (bits == 8) return packed.to(at::kFloat);
  const at::Tensor codes =
      at::bitwise_right_shift(packed.to(at::kInt).unsqueeze(-1), shifts(bits, packed.device()))
          .bitwise_and((1 << bits) - 1);
  return codes.reshape({packed.size(0), packed.size(1), -1}).to(at::kFloat);
}

}  // namespace

StorageBytes GearSideTensors::bytes() const {
  uint64_t meta = 0;
  for (const at::Tensor* t : {&scales, &mins, &outlier_values, &outlier_index, &q, &p})
    if (t->defined()) meta += uint64_t(t->nbytes());
  return {uint64_t(codes.nbytes()), meta};
}

GearSideTensors gear_compress(const GearParams& params, at::ScalarType dtype, bool is_key,
                              const at::Tensor& x, int64_t rank, uint64_t block_index,
                              const at::Tensor& start) {
  KVB_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat, "gear: a block must be [kv_heads, n, ",
            "head_dim] fp32, got ", x.sizes(), " ", c10::toString(x.scalar_type()));
  const int64_t H = x.size(0), n = x.size(1), d = x.size(2);
  const int64_t g = group_of(params, is_key, d);
  const int qmax = (1 << params.bits) - 1;
  const int64_t axis = is_key ? 1 : 2, length = is_key ? n : d;
  GearSideTensors s;
  s.k = gear_outliers_per_side(params.outlier_ratio, length);

  // S: the k smallest and k largest of each vector, ties by position (a stable sort orders by
  // value, then position), stored in ascending position.
  at::Tensor skip = at::zeros_like(x, at::kBool);
  if (s.k > 0) {
    const at::Tensor order =
        std::get<1>(at::sort(x, c10::optional<bool>(true), axis, /*descending=*/false));
    const at::Tensor picked = std::get<0>(
        at::cat({order.narrow(axis, 0, s.k), order.narrow(axis, length - s.k, s.k)}, axis)
            .sort(axis));
    s.outlier_values = x.gather(axis, picked).to(dtype);
    s.outlier_index = picked.to(is_key ? at::kInt : at::kShort);
    skip.scatter_(axis, picked, true);
  } else {
    const std::vector<int64_t> shape =
        is_key ? std::vector<int64_t>{H, 0, d} : std::vector<int64_t>{H, n, 0};
    s.outlier_values = at::empty(shape, x.options().dtype(dtype));
    s.outlier_index = at::empty(shape, x.options().dtype(is_key ? at::kInt : at::kShort));
  }

  // D: min-max over each group's non-outliers; a group with none has s = 0 and min 0.
  at::Tensor lo = x.masked_fill(skip, INFINITY), hi = x.masked_fill(skip, -INFINITY);
  if (is_key) {
    const int64_t groups = (n + g - 1) / g, pad = groups * g - n;
    lo = at::constant_pad_nd(lo, {0, 0, 0, pad}, INFINITY).view({H, groups, g, d}).amin(2);
    hi = at::constant_pad_nd(hi, {0, 0, 0, pad}, -INFINITY).view({H, groups, g, d}).amax(2);
  } else {
    lo = lo.view({H, n, d / g, g}).amin(3);
    hi = hi.view({H, n, d / g, g}).amax(3);
  }
  const at::Tensor none = lo > hi;
  lo = lo.masked_fill(none, 0.0);
  hi = hi.masked_fill(none, 0.0);
  at::Tensor mins = round_to(lo, dtype);
  // Divided by a tensor where the values are: CUDA's division by a host scalar multiplies by
  // its reciprocal, which can land one ulp away from the CPU store's quotient.
  at::Tensor steps = round_to((hi - mins) / at::scalar_tensor(qmax, hi.options()), dtype);
  // The CPU store's rule (minmax_quant.cpp): a group holding a value that is not finite, or
  // whose min or step overflows the dtype, stores NaN for both and reads back NaN.
  const at::Tensor bad = at::logical_not(at::isfinite(mins).logical_and(at::isfinite(steps)));
  mins = mins.masked_fill(bad, NAN), steps = steps.masked_fill(bad, NAN);
  const at::Tensor inv = at::where(steps.ne(0).logical_and(bad.logical_not()), steps.reciprocal(),
                                   at::zeros_like(steps));
  const at::Tensor m_e = spread(mins, is_key, g, n), s_e = spread(steps, is_key, g, n);
  // A quotient that is not finite codes 0, as in the CPU store.
  const at::Tensor q = (x - m_e) * spread(inv, is_key, g, n);
  const at::Tensor codes =
      at::clamp(at::round(q.masked_fill(at::logical_not(at::isfinite(q)), 0)), 0, qmax);
  s.codes = pack(codes, params.bits);
  s.scales = steps.to(dtype);
  s.mins = mins.to(dtype);

  // L: rank-r factors of the residual (zero at outliers), rounded to the model dtype; a head
  // whose rounded factors would not reduce ||E|| gets zero factors.
  if (rank > 0) {
    // Zero at outliers and in groups stored NaN, as in the CPU store.
    const at::Tensor d_x = codes * s_e + m_e;
    const at::Tensor e =
        at::where(skip.logical_or(at::isfinite(d_x).logical_not()), at::zeros_like(x), x - d_x);
    auto [q, p] = start.defined() ? gear_low_rank(e, start, params.power_iters)
                                  : gear_low_rank(e, rank, params.power_iters,
                                                  gear_block_seed(params, block_index));
    at::Tensor q16 = q.to(dtype), p16 = p.transpose(1, 2).to(dtype).contiguous();
    const at::Tensor after =
        (e - at::bmm(q16.to(at::kFloat), p16.to(at::kFloat))).square().sum({1, 2});
    const at::Tensor keep = at::logical_not(after > e.square().sum({1, 2})).view({H, 1, 1});
    s.q = at::where(keep, q16, at::zeros_like(q16)).contiguous();
    s.p = at::where(keep, p16, at::zeros_like(p16)).contiguous();
  } else {
    s.q = at::empty({H, n, 0}, x.options().dtype(dtype));
    s.p = at::empty({H, 0, d}, x.options().dtype(dtype));
  }
  return s;
}

at::Tensor gear_reconstruct(const GearParams& params, bool is_key, const GearSideTensors& side) {
  const at::Tensor codes = unpack(side.codes, params.bits);
  const int64_t n = codes.size(1), d = codes.size(2), g = group_of(params, is_key, d);
  const at::Tensor s_e = spread(side.scales.to(at::kFloat), is_key, g, n);
  at::Tensor x = codes * s_e + spread(side.mins.to(at::kFloat), is_key, g, n);
  if (side.q.size(2) > 0) {
    const at::Tensor l = at::bmm(side.q.to(at::kFloat), side.p.to(at::kFloat));
    // Half a step either way: a constant group's step can be a tiny negative number
    // (methods.md), whose cell is the same width.
    const at::Tensor half = 0.5 * s_e.abs();
    x = x + at::minimum(at::maximum(l, -half), half);
  }
  if (side.outlier_values.numel() > 0)
    x.scatter_(is_key ? 1 : 2, side.outlier_index.to(at::kLong),
               side.outlier_values.to(at::kFloat));
  return x;
}

StorageBytes gear_block_nominal(const GearParams& params, at::ScalarType dtype, bool is_key,
                                int64_t n, int64_t rank, int64_t k, int64_t kv_heads,
                                int64_t head_dim) {
  const uint64_t e = at::elementSize(dtype), d = head_dim, g = group_of(params, is_key, head_dim);
  const uint64_t un = n, uk = k, ur = rank;
  const uint64_t scale_rows = is_key ? (un + g - 1) / g : un;
  const uint64_t scale_width = is_key ? d : d / g;
  StorageBytes s;
  s.payload = un * d * params.bits / 8;
  s.metadata = scale_rows * scale_width * 2 * e +
               (is_key ? 2 * uk * d : un * 2 * uk) * (e + (is_key ? 4 : 2)) + ur * (un + d) * e;
  return {s.payload * kv_heads, s.metadata * kv_heads};
}

}  // namespace kvbench
