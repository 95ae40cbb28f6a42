// Round-to-nearest: min-max parameters (formats/int_quant.h), then each weight
// rounded to its nearest code independently. The baseline every method beats.
#ifndef QAAS_QUANT_METHODS_RTN_H_
#define QAAS_QUANT_METHODS_RTN_H_

#include <ATen/ATen.h>

#include "quant/methods/quantized_linear.h"
#include "quant/scheme.h"

namespace qaas::quant {

// w: float [out, in]; spec: integer or MX weights. Does not modify w.
QuantizedLinear QuantizeRtn(const at::Tensor& w, const TensorQuant& spec);

// w rounded to its nearest codes under given integer parameters (RTN's
// rounding with another method's ranges, e.g. OmniQuant's clipped ones).
QuantizedLinear QuantizeWithParams(const at::Tensor& w, IntQuantParams params);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_RTN_H_
