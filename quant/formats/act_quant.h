// Activation and KV-cache quantization, simulated in float ("fake quant"):
// every tensor is quantized and dequantized where the inference kernel would
// quantize it, so perplexity measures what the quantized model computes.
//
// Where (ActPoint): the input of each group of linears that shares one input
// (q/k/v; the attention output; the MLP's input projections; the MLP's
// hidden state), and K (after RoPE, as cached) and V.
//
// How (ActQuantizer), per scheme:
//  - INT per token (dynamic): one scale per row over the last dimension,
//    symmetric (scale = max|x| / (2^(b-1) - 1), codes in [-(2^(b-1)-1), 2^(b-1)-1])
//    or asymmetric (min-max, zero point rounded, codes in [0, 2^b - 1]);
//  - INT static: scale (and zero) fixed at calibration, one per tensor or one
//    per channel (RPTQ's per-cluster parameters, expanded to the channels);
//  - MX (MXINT, MXFP): blocks of 32 along the last dimension (formats/number_format.h);
//  - FP8: dynamic scales max|x| / max_value(element), one per token for
//    activations, one per tensor for the KV cache.
// The KV cache is quantized per token and head: rows are head_dim long.
#ifndef QAAS_QUANT_FORMATS_ACT_QUANT_H_
#define QAAS_QUANT_FORMATS_ACT_QUANT_H_

#include <ATen/ATen.h>

#include <array>
#include <string>

#include "absl/status/statusor.h"
#include "quant/scheme.h"

namespace qaas::quant {

enum class ActPoint {
  kAttnIn = 0,   // q/k/v input: the attention norm's output
  kAttnOut = 1,  // o_proj / out_proj input
  kMlpIn = 2,    // gate/up (LLaMA), fc1 (OPT) input: the MLP norm's output
  kMlpHidden = 3,  // down_proj / fc2 input
};
constexpr int kNumActPoints = 4;
const char* ActPointName(ActPoint p);  // "attn_in", "attn_out", "mlp_in", "mlp_hidden"

// Quantizes one activation tensor. Default-constructed: the identity.
struct ActQuantizer {
  TensorQuant spec;  // format kNone: identity
  // Static INT parameters, broadcast over the last dimension: scalars (per
  // tensor) or [channels] (per channel). Undefined: dynamic.
  at::Tensor scale;
  at::Tensor zero;  // asymmetric only

  bool enabled() const { return spec.enabled(); }
  bool is_static() const { return scale.defined(); }
  // x: [..., channels] float -> same shape, quantized and dequantized. When
  // x requires grad, the gradient passes straight through (identity).
  at::Tensor operator()(const at::Tensor& x) const;
  ActQuantizer To(const at::Device& device) const;
};

// A layer's activation quantizers; held by a layer through a shared pointer
// (undefined pointer: the float layer).
struct LayerActQuant {
  std::array<ActQuantizer, kNumActPoints> inputs;
  ActQuantizer kv;  // applied to K and V, rows of head_dim
  const ActQuantizer& at(ActPoint p) const { return inputs[static_cast<int>(p)]; }
  ActQuantizer& at(ActPoint p) { return inputs[static_cast<int>(p)]; }
  LayerActQuant To(const at::Device& device) const;
};

// Checks that the pipeline can simulate `spec` for activations (kind
// "activations") or the KV cache; InvalidArgument/Unimplemented naming it.
absl::Status CheckActivationSpec(const TensorQuant& spec, const std::string& kind);

// The dynamic quantizer for `spec` (per token, MX or FP8), or, for a static
// INT spec, the quantizer with per-tensor parameters from a calibrated range.
ActQuantizer DynamicQuantizer(const TensorQuant& spec);
ActQuantizer StaticPerTensorQuantizer(const TensorQuant& spec, double min, double max);
// Per-channel static parameters from per-channel ranges [channels] (RPTQ:
// every channel of a cluster gets the cluster's range). Asymmetric.
ActQuantizer StaticPerChannelQuantizer(const TensorQuant& spec, const at::Tensor& min, const at::Tensor& max);

// Integer fake quantization helpers (also used by tests).
// Per row over the last dimension: by per_token_kernel.h's kernel where it
// applies (float32 on an AVX2 CPU), else by the ATen formula, which gives
// the same bits.
at::Tensor FakeQuantizePerToken(const at::Tensor& x, int bits, bool symmetric);
at::Tensor FakeQuantizePerTokenFormula(const at::Tensor& x, int bits, bool symmetric);
// With fixed scale/zero broadcast over the last dimension (zero undefined: symmetric).
at::Tensor FakeQuantizeStatic(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero, int bits);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_FORMATS_ACT_QUANT_H_
