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
  q.params = ComputeIntParams(w, spec);
  q.codes = QuantizeToCodes(w, q.params);
  q.dequantized = DequantizeCodes(q.codes, q.params);
  const int64_t in = w.size(1);
  const int64_t g = q.params.group_size == 0 ? in : q.params.group_size;
  q.g_idx = at::div(at::arange(in, at::TensorOptions().dtype(at::kLong)), g, "floor").to(at::kInt);
  return q;
}

}  // namespace qaas::quant
