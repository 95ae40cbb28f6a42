// What a weight quantizer returns for one linear layer.
#ifndef QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_
#define QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_

#include <ATen/ATen.h>

#include "quant/formats/int_quant.h"
#include "quant/formats/number_format.h"

namespace qaas::quant {

// Per output channel (the usual layout) or, for AdaDim's per-IC groups, per
// input channel: then codes/params/g_idx describe the transposed weight W^T
// [in, out] (groups run along the output dimension), which is what lets the
// per-IC case reuse the same packing. MX weights (mx = true) carry only
// `dequantized`: their storage form comes from PackMx, which reproduces the
// values exactly (formats/number_format.h). FP8 weights (fp8 = true, E4M3
// per output channel): codes are the elements' bit patterns, params.scale
// [out, 1] (zero 0, g_idx 0) and dequantized = decode(code) * scale.
struct QuantizedLinear {
  at::Tensor codes;        // int32 [out, in] ([in, out] when per_input_channel)
  IntQuantParams params;   // scale/zero [out, groups] ([in, groups] when per_input_channel)
  at::Tensor g_idx;        // int32 [in] ([out] when per_input_channel): the group of each column
  at::Tensor dequantized;  // float32 [out, in] always: what inference computes with
  bool per_input_channel = false;
  bool mx = false;
  bool fp8 = false;
  ElementFormat element = ElementFormat::kInt8;  // mx and fp8
};

// ||W - W'||_F / ||W||_F
double RelativeError(const at::Tensor& reference, const at::Tensor& approx);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_
