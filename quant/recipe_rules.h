// The rules a recipe obeys, shared by the server's request validation and the
// pipeline (which also runs offline, without a server). Pure C++ (no
// libtorch), like scheme.h; every method-specific fact comes from the method
// table (method_table.h).
//
// A recipe is zero or more function-preserving transforms (kind kTransform),
// then at most one weight quantizer (kWeightQuantizer).
#ifndef QAAS_QUANT_RECIPE_RULES_H_
#define QAAS_QUANT_RECIPE_RULES_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "quant/method_table.h"
#include "quant/scheme.h"

namespace qaas::quant {

bool IsTransformMethod(absl::string_view method);

// Every step names a method of the table and gives only its options, within
// their bounds (InvalidArgument "recipe[i]: ..." or "recipe[i].<method>.<option>: ..."),
// then CheckRecipeOrder.
absl::Status CheckRecipe(const std::vector<RecipeStep>& steps);

// Transforms before the weight quantizer, at most one weight quantizer, no
// method with one it excludes. InvalidArgument starting "recipe: " otherwise.
absl::Status CheckRecipeOrder(const std::vector<RecipeStep>& steps);

// The combinations a scheme rules out (each method's fits_scheme: RPTQ needs
// integer activations, AdaDim and OmniQuant integer weights, ...).
// InvalidArgument naming both otherwise.
absl::Status CheckRecipeFitsScheme(const std::vector<RecipeStep>& steps, const Scheme& scheme);

// What needs calibration data: the first method that calibrates, else
// "static activation scales" for a "_static" scheme; empty when nothing does.
std::string CalibrationNeed(const std::vector<RecipeStep>& steps, const Scheme& scheme);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_RECIPE_RULES_H_
