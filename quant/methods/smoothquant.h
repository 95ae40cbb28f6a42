// SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient
// Post-Training Quantization for Large Language Models"): migrate activation
// outliers into the weights with a per-channel scale s,
//
//   s_j = max|X_j|^alpha / max|W_j|^(1 - alpha),
//
// where max|X_j| is input channel j's calibration abs-max and max|W_j| the
// abs-max of column j over every linear reading X. X diag(s)^-1 is computed
// for free by dividing the preceding norm's weight (and bias) by s, and each
// consumer's columns are multiplied by s, so the float function is unchanged.
// Applied at the two norm-fed points: q/k/v after the attention norm, and the
// MLP's input projections after the MLP norm.
#ifndef QAAS_QUANT_METHODS_SMOOTHQUANT_H_
#define QAAS_QUANT_METHODS_SMOOTHQUANT_H_

#include <ATen/ATen.h>

#include "absl/status/status.h"
#include "quant/method_table.h"
#include "quant/model/decoder.h"

namespace qaas::quant {

struct SmoothQuantOptions {
  double alpha = 0.5;  // migration strength, in [0, 1]
};

// The options of a "smoothquant" recipe step (method_table.h, whose defaults
// equal these: a test checks).
inline SmoothQuantOptions SmoothQuantOptionsOf(const RecipeStep& step) {
  SmoothQuantOptions o;
  o.alpha = step.Get("alpha", o.alpha);
  return o;
}

// The smoothing scales [channels] from the activations' and the consumers'
// per-channel abs-max ([channels] each). Channels where either is zero keep
// scale 1; scales are clamped to >= 1e-5 as the paper's code does.
at::Tensor SmoothingScales(const at::Tensor& act_absmax, const at::Tensor& weight_absmax, double alpha);

// Smooths the norm-fed point p (kAttnIn or kMlpIn) of `layer` in place with
// the activation abs-max [channels] measured at p. Returns the scales used.
// FailedPrecondition when the norm has no affine weight to fold into.
absl::StatusOr<at::Tensor> SmoothLayer(const DecoderModel& model, ActPoint p, const at::Tensor& act_absmax,
                                       const SmoothQuantOptions& options, DecoderLayer* layer);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_SMOOTHQUANT_H_
