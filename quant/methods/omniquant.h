// OmniQuant (Shao et al. 2024, "OmniQuant: Omnidirectionally Calibrated
// Quantization for Large Language Models"): per decoder block, learn
//
//  - LWC, learnable weight clipping: per output channel (or group) factors
//    gamma = sigmoid(a), beta = sigmoid(b), initialised at sigmoid(4), shrink
//    the range the integer quantizer spans:
//      h = (gamma max(W) - beta min(W)) / (2^N - 1),  z = -round(beta min(W) / h)
//    (our quantizer's conventions: formats/int_quant.h, so the artifact stays
//    GPTQ-loadable);
//  - LET, learnable equivalent transformation (only when activations or the
//    KV cache are quantized): a channel-wise scale s and shift delta at each
//    norm -> linear pair,  Y = ((X - delta) / s)(s * W)^T + (B + delta W^T),
//    folded into the norm's weight and bias and the consumers' columns and
//    biases; the shift only where the norm and linears have biases (OPT), not
//    LLaMA. Plus a query/key scale: q rows / s_qk, k rows * s_qk, which moves
//    K-cache outliers into the (unquantized) queries; for rotary models s_qk
//    is shared by the channel pairs RoPE rotates together and by the query
//    heads of a KV group, so the function is unchanged.
//
// by minimising the mean squared error between the float block's output (on
// the float model's inputs) and the quantized block's output (on the
// quantized model's inputs), with AdamW (weight decay 0) and straight-through
// rounding. Then s and delta are folded for good and the weights stored
// clipped and quantized: no inference overhead.
//
// Deterministic: fixed initialisation, calibration windows in order, and
// single-threaded CPU math (the seed picks the calibration windows).
#ifndef QAAS_QUANT_METHODS_OMNIQUANT_H_
#define QAAS_QUANT_METHODS_OMNIQUANT_H_

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/method_table.h"
#include "quant/methods/quantized_linear.h"
#include "quant/model/decoder.h"
#include "quant/scheme.h"

namespace qaas::quant {

struct OmniQuantOptions {
  int epochs = 0;        // 0: the paper's 20, or 40 for weights of 2 bits or fewer
  double lwc_lr = 1e-2;  // learning rate of the clipping logits
  double let_lr = 5e-3;  // learning rate of log s, delta, log s_qk
  int batch_windows = 1;  // calibration windows per step (the paper: 1)
  double let_alpha = 0.5;  // SmoothQuant migration strength LET starts from
};

// The options of an "omniquant" recipe step (method_table.h, whose defaults
// equal these: a test checks).
inline OmniQuantOptions OmniQuantOptionsOf(const RecipeStep& step) {
  OmniQuantOptions o;
  o.epochs = step.Get("epochs", o.epochs);
  o.lwc_lr = step.Get("lwc_lr", o.lwc_lr);
  o.let_lr = step.Get("let_lr", o.let_lr);
  return o;
}

// InvalidArgument naming the option unless epochs >= 0, batch_windows >= 1
// and both learning rates > 0.
absl::Status CheckOmniQuantOptions(const OmniQuantOptions& options);

// The epochs a run uses for `weights` (resolving epochs = 0).
int OmniQuantEpochs(const OmniQuantOptions& options, const TensorQuant& weights);

// The range factors LWC learns for a weight [out, in] under `spec` (integer):
// [out, groups] (groups as ComputeIntParams: per channel 1, per tensor [1, 1]).
std::vector<int64_t> ClippingShape(const at::Tensor& w, const TensorQuant& spec);

// Fake quantization with clipped ranges: gamma/beta broadcast to
// ClippingShape(w, spec) scale each group's max/min. Differentiable in w,
// gamma and beta (straight-through rounding). gamma = beta = 1 is RTN.
at::Tensor LwcFakeQuantize(const at::Tensor& w, const TensorQuant& spec, const at::Tensor& gamma,
                           const at::Tensor& beta);
// The same quantization as codes and parameters (no gradients): its
// `dequantized` equals LwcFakeQuantize's values exactly.
QuantizedLinear LwcQuantize(const at::Tensor& w, const TensorQuant& spec, const at::Tensor& gamma,
                            const at::Tensor& beta);

// LET's parameters for one layer; undefined tensors are not learned (identity).
struct LetParams {
  at::Tensor attn_scale, attn_shift;  // [hidden]: the attention norm -> q/k/v
  at::Tensor mlp_scale, mlp_shift;    // [hidden]: the MLP norm -> its input projections
  // q/k: [kv_heads, head_dim / 2] (rotary) or [kv_heads, head_dim]; with
  // q/k norms (QueryKeyLayout) [head_dim / 2] or [head_dim], in their weights.
  at::Tensor qk_scale;
};

// `layer` (float) with LET folded in: function-preserving in exact
// arithmetic. Differentiable in the parameters. InvalidArgument when a shift
// has no bias to fold into.
absl::StatusOr<DecoderLayer> ApplyLet(const DecoderModel& model, const DecoderLayer& layer, const LetParams& let);

struct OmniQuantResult {
  DecoderLayer folded;  // float, LET folded in; carries the activation quantizers
  std::vector<QuantizedLinear> linears;  // LinearNames() order; empty when weights stay float
  // What was learned (detached): LET's parameters (undefined without LET)
  // and each linear's clipping factors (empty without LWC).
  LetParams let;
  std::vector<at::Tensor> gamma, beta;
  // epochs, steps, loss (mean per epoch), initial_loss and trained_loss (the
  // stored block at the initial and at the learned parameters, on every
  // window), kept ("trained", or "initial" where training ended worse than it
  // began), final_loss (the kept block's), seconds, lwc {gamma_mean,
  // beta_mean}, let {ranges}; lwc and let describe the kept parameters
  nlohmann::json details;
};

// Learns LWC (when `weights` is enabled) and LET (when `let` is true) for
// `layer` (float, with its activation quantizers set) so that its quantized
// output on `inputs` [n, T, hidden] approaches `targets` (the float block on
// the float model's inputs). `on_epoch(epoch, mean_loss)` after each epoch;
// returning false stops training with Cancelled. The result is never worse on
// `inputs` than the initial parameters: where training ends above
// initial_loss, the initial parameters are kept. InvalidArgument for MX
// weights; Internal when the loss stops being finite.
absl::StatusOr<OmniQuantResult> OmniQuantLayer(const DecoderModel& model, const DecoderLayer& layer,
                                               const at::Tensor& inputs, const at::Tensor& targets,
                                               const TensorQuant& weights, bool let,
                                               const OmniQuantOptions& options,
                                               const std::function<bool(int, double)>& on_epoch = nullptr);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHODS_OMNIQUANT_H_
