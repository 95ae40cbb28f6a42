// AdaDim (Heo et al. 2023, "Rethinking Channel Dimensions to Isolate
// Outliers for Low-bit Weight Quantization of Large Language Models"):
// activation outliers sit in a few input channels, so grouping weights per
// input channel (per-IC: groups along the output dimension) can isolate them
// better than the usual per-output-channel groups. AdaDim picks, per layer,
// whichever of the two gives the smaller error of the enclosing block's
// output on calibration data; it augments RTN and GPTQ alike.
#ifndef QAAS_QUANT_METHODS_ADADIM_H_
#define QAAS_QUANT_METHODS_ADADIM_H_

#include <ATen/ATen.h>

#include <functional>

#include "quant/methods/quantized_linear.h"
#include "quant/scheme.h"

namespace qaas::quant {

// RTN with per-IC groups: each input channel's weights in groups of
// spec.group_size output rows (the whole column without a group size).
QuantizedLinear QuantizeRtnPerInputChannel(const at::Tensor& w, const TensorQuant& spec);

struct AdaDimChoice {
  bool per_input_channel = false;
  double error_per_oc = 0;  // mean squared error of the block output
  double error_per_ic = 0;
};

// Runs `block_output` with each candidate weight in place of the layer's and
// keeps the candidate closer to `reference` (the full-precision block output).
AdaDimChoice ChooseAxis(const QuantizedLinear& per_oc, const QuantizedLinear& per_ic,
                        const at::Tensor& reference,
                        const std::function<at::Tensor(const at::Tensor& weight)>& block_output);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_ADADIM_H_
