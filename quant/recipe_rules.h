// The rules a recipe obeys, shared by the server's request validation and the
// pipeline (which also runs offline, without a server). Pure C++ (no
// libtorch), like scheme.h.
//
// A recipe is zero or more function-preserving transforms ("smoothquant",
// "rptq"), then at most one weight quantizer ("rtn", "gptq", "adadim",
// "omniquant").
#ifndef QAAS_QUANT_RECIPE_RULES_H_
#define QAAS_QUANT_RECIPE_RULES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "quant/scheme.h"

namespace qaas::quant {

bool IsTransformMethod(absl::string_view method);

// Transforms before the weight quantizer, and at most one weight quantizer;
// omniquant not after rptq. InvalidArgument starting "recipe: " otherwise.
absl::Status CheckRecipeOrder(const std::vector<std::string>& methods);

// The combinations a scheme rules out: RPTQ needs integer activations,
// AdaDim and OmniQuant need integer weights, OmniQuant dynamic activations.
// InvalidArgument naming both otherwise.
absl::Status CheckRecipeFitsScheme(const std::vector<std::string>& methods, const Scheme& scheme);

// What needs calibration data: the first method that calibrates (gptq,
// adadim, omniquant, smoothquant, rptq), else "static activation scales" for a
// "_static" scheme; empty when nothing does.
std::string CalibrationNeed(const std::vector<std::string>& methods, const Scheme& scheme);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_RECIPE_RULES_H_
