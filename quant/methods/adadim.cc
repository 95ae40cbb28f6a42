#include "quant/methods/adadim.h"

#include "quant/methods/rtn.h"

namespace qaas::quant {

QuantizedLinear QuantizeRtnPerInputChannel(const at::Tensor& w, const TensorQuant& spec) {
  QuantizedLinear q = QuantizeRtn(w.t().contiguous(), spec);
  q.per_input_channel = true;
  q.dequantized = q.dequantized.t().contiguous();
  return q;
}

AdaDimChoice ChooseAxis(const QuantizedLinear& per_oc, const QuantizedLinear& per_ic,
                        const at::Tensor& reference,
                        const std::function<at::Tensor(const at::Tensor& weight)>& block_output) {
  AdaDimChoice c;
  c.error_per_oc = (block_output(per_oc.dequantized) - reference).pow(2).mean().item<double>();
  c.error_per_ic = (block_output(per_ic.dequantized) - reference).pow(2).mean().item<double>();
  c.per_input_channel = c.error_per_ic < c.error_per_oc;
  return c;
}

}  // namespace qaas::quant
