// What a weight quantizer returns for one linear layer.
#ifndef QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_
#define QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_

#include <ATen/ATen.h>

#include "quant/formats/int_quant.h"

namespace qaas::quant {

struct QuantizedLinear {
  at::Tensor codes;        // int32 [out, in], in the original column order
  IntQuantParams params;   // scale/zero [out, groups]
  at::Tensor g_idx;        // int32 [in]: the group of each input column
  at::Tensor dequantized;  // float32 [out, in]: what inference computes with
};

// ||W - W'||_F / ||W||_F
double RelativeError(const at::Tensor& reference, const at::Tensor& approx);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_QUANTIZED_LINEAR_H_
