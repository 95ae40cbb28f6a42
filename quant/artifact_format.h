// Which artifact format a job writes: the GPTQ layout or compressed-tensors
// (export.h), and whether compressed-tensors can store a scheme and recipe.
// Torch-free: the server checks a job's choice at submit.
#ifndef QAAS_QUANT_ARTIFACT_FORMAT_H_
#define QAAS_QUANT_ARTIFACT_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/method_table.h"
#include "quant/scheme.h"

namespace qaas::quant {

// Whether compressed-tensors can store what `scheme` and `recipe` produce;
// InvalidArgument naming why not. It stores integer weights 2..8 bits
// (symmetric or not, per channel or per group; GPTQ's act_order only with
// static_groups: the format has no permuted g_idx) with float activations
// ("pack-quantized"); symmetric 8-bit integer weights per channel with
// symmetric 8-bit activations per token or static per tensor
// ("int-quantized", vLLM's int8 kernels); MXFP4 (E2M1) and MXFP8 (E4M3)
// weights with float or the same MX activations ("mxfp4-pack-quantized",
// "mxfp8-quantized"); FP8 E4M3 weights per channel with float or FP8
// activations per token ("float-quantized", vLLM's FP8_DYNAMIC); and an
// integer, MXFP4/MXFP8 or FP8 KV cache as
// kv_cache_scheme. Not: RPTQ's reordered channels, AdaDim's
// per-input-channel groups, other MX elements, float weights.
//
// `input_widths` (when given: the input features of the model's linears)
// must be multiples of the weights' group size (32 for MX): the format has
// no ragged last group (compressed-tensors refuses to decompress one, vLLM's
// kernels need whole groups).
absl::Status CompressedTensorsFits(const Scheme& scheme, const std::vector<RecipeStep>& recipe,
                                   const std::vector<int64_t>& input_widths = {});


// The artifact format a job's `format` names: "gptq" and
// "compressed-tensors" as they are (the latter checked with
// CompressedTensorsFits), "auto" (or "") the better one for the scheme: the
// GPTQ layout for weight-only integer schemes (every GPTQ loader, and
// act_order's g_idx), else compressed-tensors where it fits, else the GPTQ
// layout's qaas form; FP8 weights only compressed-tensors stores.
// InvalidArgument for another name.
absl::StatusOr<std::string> ResolveArtifactFormat(const std::string& format, const Scheme& scheme,
                                                  const std::vector<RecipeStep>& recipe,
                                                  const std::vector<int64_t>& input_widths = {});

// MXFP4 (E2M1) or MXFP8 (E4M3): the MX elements compressed-tensors stores.
bool IsCtMx(const TensorQuant& q);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_ARTIFACT_FORMAT_H_
