#include "quant/methods/rtn.h"

namespace qaas::quant {

double RelativeError(const at::Tensor& reference, const at::Tensor& approx) {
  const double denom = reference.norm().item<double>();
  const double num = (reference - approx).norm().item<double>();
  return denom > 0 ? num / denom : num;
}

QuantizedLinear QuantizeRtn(const at::Tensor& w, const TensorQuant& spec) {
  QuantizedLinear q;
  q.params = ComputeIntParams(w, spec);
  q.codes = QuantizeToCodes(w, q.params);
  q.dequantized = DequantizeCodes(q.codes, q.params);
  const int64_t in = w.size(1);
  const int64_t g = q.params.group_size == 0 ? in : q.params.group_size;
  q.g_idx = at::div(at::arange(in, at::TensorOptions().dtype(at::kLong)), g, "floor").to(at::kInt);
  return q;
}

}  // namespace qaas::quant
