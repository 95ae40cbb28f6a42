// The artifact: a Hugging Face directory whose linear layers are stored in the
// GPTQ checkpoint layout (docs/artifact-format.md), loadable by AutoGPTQ /
// GPTQModel / Transformers / vLLM, plus the tokenizer and qaas_manifest.json.
//
// Per quantized linear "<p>" (e.g. model.layers.0.self_attn.q_proj), with
// in x out weights, b bits and G groups:
//   <p>.qweight  int32 [in*b/32, out]  codes packed along the input dimension
//   <p>.qzeros   int32 [G, out*b/32]   (zero - 1) packed along the output dim
//                                      (GPTQ "v1" convention; loaders add 1)
//   <p>.scales   float16 [G, out]
//   <p>.g_idx    int32 [in]            group of each input column
//   <p>.bias     float16 [out]         when the layer has one
// W[o, i] = scales[g_idx[i], o] * (code[i, o] - zero[g_idx[i], o]).
#ifndef QAAS_QUANT_EXPORT_H_
#define QAAS_QUANT_EXPORT_H_

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/methods/quantized_linear.h"
#include "quant/model/safetensors.h"
#include "quant/scheme.h"

namespace qaas::quant {

// The packed tensors of one linear layer.
std::vector<RawTensor> PackGptqLinear(const std::string& prefix, const QuantizedLinear& q,
                                      const at::Tensor& bias);

// Reads the packed tensors of `prefix` back into a float32 [out, in] weight.
// InvalidArgument naming the tensor when one is missing or mis-shaped.
absl::StatusOr<at::Tensor> UnpackGptqLinear(const std::map<std::string, RawTensor>& tensors,
                                            const std::string& prefix, int bits, int64_t in,
                                            int64_t out);

// The "quantization_config" entry of config.json for a weight scheme;
// desc_act / static_groups / damp_percent describe how GPTQ ran (RTN: defaults).
nlohmann::json GptqQuantizationConfig(const Scheme& scheme, bool desc_act = false,
                                      bool static_groups = false, double damp_percent = 0.01);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EXPORT_H_
