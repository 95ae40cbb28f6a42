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
  if (spec.format == NumberFormat::kFp8E4M3 || spec.format == NumberFormat::kFp8E5M2) {
    // One scale per output channel, max|w| / max_value, in the scale dtype
    // (int_quant.h's ScaleDType); each weight rounded to the element.
    q.fp8 = true;
    q.element = *ElementFormatOf(spec);
    const double max_value = Traits(q.element).max_value;
    const at::Tensor wf = w.to(at::kFloat);
    at::Tensor scale = at::clamp_min(wf.abs().amax(1, true) / max_value, 6e-8);
    scale = scale.to(ScaleDType()).to(at::kFloat);
    const at::Tensor x = at::clamp(wf / scale, -max_value, max_value);
    q.codes = EncodeElements(x, q.element);
    q.dequantized = RoundToElement(x, q.element) * scale;
    q.params.bits = 8;
    q.params.symmetric = true;
    q.params.scale = scale;
    q.params.zero = at::zeros_like(scale);
    q.g_idx = at::zeros({w.size(1)}, at::TensorOptions().dtype(at::kInt));
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
