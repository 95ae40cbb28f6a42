// Uniform integer quantization of weight matrices [out, in]:
//   code = clamp(round(w / scale) + zero, 0, 2^bits - 1),  w' = (code - zero) * scale
// with one (scale, zero) per output channel, per group of `group_size`
// consecutive input columns, or per tensor.
//
// Conventions follow GPTQ (Frantar et al. 2022, reference quantizer), so the
// artifact can be written in the GPTQ checkpoint layout without conversion:
//  - asymmetric: the range [min(w), max(w)] is widened to include 0,
//    scale = (max - min) / (2^bits - 1), zero = round(-min / scale), except
//    that zero is kept >= 1 (a group that would get 0 uses
//    scale = max(max / (2^bits - 2), -min), zero = 1): see RangeToScaleZero;
//  - symmetric: m = max|w|, scale = 2m / (2^bits - 1), zero = 2^(bits-1).
// Scales are rounded to float16 before codes are computed, because the
// exported checkpoint stores them in float16: dequantizing the export gives
// exactly the weights the pipeline evaluated.
#ifndef QAAS_QUANT_FORMATS_INT_QUANT_H_
#define QAAS_QUANT_FORMATS_INT_QUANT_H_

#include <ATen/ATen.h>

#include "quant/scheme.h"

namespace qaas::quant {

struct IntQuantParams {
  int bits = 4;
  bool symmetric = false;
  int group_size = 0;  // 0 = one group spanning all input columns
  at::Tensor scale;    // [out, groups] float32 (float16-representable)
  at::Tensor zero;     // [out, groups] float32, integer-valued
};

// The dtype scales are rounded to, on this thread: float16 (the GPTQ
// layout's) by default; bfloat16 within a ScaleDTypeScope(at::kBFloat16),
// which the pipeline opens when a compressed-tensors artifact of a bfloat16
// model stores its scales in bfloat16 (the loaders compute in the model
// dtype), so the artifact decodes to exactly the evaluated weights.
at::ScalarType ScaleDType();
class ScaleDTypeScope {
 public:
  explicit ScaleDTypeScope(at::ScalarType dtype);
  ~ScaleDTypeScope();
  ScaleDTypeScope(const ScaleDTypeScope&) = delete;
  ScaleDTypeScope& operator=(const ScaleDTypeScope&) = delete;

 private:
  at::ScalarType previous_;
};

// Number of input columns in a group for `spec` and a matrix with `in` columns.
int64_t GroupSize(const TensorQuant& spec, int64_t in);

// What IntQuantParams::group_size records for `spec` on `in` columns: the
// group size, or 0 when one group spans them all (per channel, per tensor).
int StoredGroupSize(const TensorQuant& spec, int64_t in);

// Each group's min and max of `w` ([out, in]) under `spec`: [out, groups]
// (per tensor: the tensor's, broadcast to [out, 1]). A ragged last group is
// padded with its own first column, which leaves its range unchanged.
void GroupRanges(const at::Tensor& w, const TensorQuant& spec, at::Tensor* xmin, at::Tensor* xmax);

// [out, groups] parameters expanded to the [out, in] columns they cover.
at::Tensor ExpandGroups(const at::Tensor& t, int group_size, int64_t in);

// Min-max parameters of `w` ([out, in]) for `spec` (format kInt). For
// per-tensor the single (scale, zero) is broadcast to every row.
IntQuantParams ComputeIntParams(const at::Tensor& w, const TensorQuant& spec);

// Parameters from given per-row ranges (the building block GPTQ reuses on one
// group of columns): xmin/xmax are [rows] (or [rows, groups]). Differentiable
// in xmin/xmax: roundings pass gradients straight through (RoundSte).
void RangeToScaleZero(const at::Tensor& xmin, const at::Tensor& xmax, int bits, bool symmetric,
                      at::Tensor* scale, at::Tensor* zero);

// The group of each of `in` columns under `p` (int32 [in]), as GPTQ's g_idx.
at::Tensor GroupIndex(const IntQuantParams& p, int64_t in);

// Integer codes [out, in] (int32) of `w` under `p`.
at::Tensor QuantizeToCodes(const at::Tensor& w, const IntQuantParams& p);
// Float weights [out, in] from codes.
at::Tensor DequantizeCodes(const at::Tensor& codes, const IntQuantParams& p);
// round(x) forward; when x requires grad, the identity backward (the
// straight-through estimator), so learned clipping (OmniQuant's LWC) can
// train through the rounding. The forward value is exactly at::round(x).
at::Tensor RoundSte(const at::Tensor& x);

// Quantize then dequantize one column block with matching [rows, 1] scale/zero.
at::Tensor FakeQuantizeColumns(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero,
                               int bits);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_FORMATS_INT_QUANT_H_
