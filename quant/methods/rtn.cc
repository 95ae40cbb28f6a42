#include "quant/methods/rtn.h"

namespace qaas::quant {

double RelativeError(const at::Tensor& reference, const at::Tensor& approx) {
  const double denom = reference.norm().item<double>();
  const double num = (reference - approx).norm().item<double>();
  return denom > 0 ? num / denom : num;
}

QuantizedLinear QuantizeRtn(const at::Tensor& w, const TensorQuant& spec) {
  QuantizedLinear q;
  if (spec.is_mx()) {
    // Blocks of 32 along the input (reduction) dimension, each weight rounded
    // to the nearest element under its block's shared scale.
    q.mx = true;
    q.element = *ElementFormatOf(spec);
    q.dequantized = FakeQuantizeMx(w.to(at::kFloat), q.element);
    return q;
  }
  return QuantizeWithParams(w, ComputeIntParams(w, spec));
}

QuantizedLinear QuantizeWithParams(const at::Tensor& w, IntQuantParams params) {
  QuantizedLinear q;
  q.params = std::move(params);
  q.codes = QuantizeToCodes(w, q.params);
  q.dequantized = DequantizeCodes(q.codes, q.params);
  q.g_idx = GroupIndex(q.params, w.size(1));
  return q;
}

}  // namespace qaas::quant
