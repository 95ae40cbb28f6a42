#include "quant/recipe_rules.h"

#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

bool IsTransformMethod(absl::string_view method) {
  const MethodSpec* m = FindMethod(method);
  return m && m->kind == MethodKind::kTransform;
}

absl::Status CheckRecipe(const std::vector<RecipeStep>& steps) {
  for (size_t i = 0; i < steps.size(); ++i) {
    QAAS_RETURN_IF_ERROR(CheckStepOptions(steps[i], absl::StrCat("recipe[", i, "]")));
  }
  return CheckRecipeOrder(steps);
}

absl::Status CheckRecipeOrder(const std::vector<RecipeStep>& steps) {
  const std::string* weight_method = nullptr;
  for (const RecipeStep& step : steps) {
    const std::string& m = step.method;
    if (IsTransformMethod(m)) {
      if (weight_method) {
        return absl::InvalidArgumentError(absl::StrCat("recipe: ", m, " transforms the float model and must come "
                                                       "before the weight quantizer ", *weight_method));
      }
    } else {
      if (weight_method) {
        return absl::InvalidArgumentError(
            absl::StrCat("recipe: one weight quantizer per recipe, got ", *weight_method, " and ", m));
      }
      weight_method = &m;
    }
  }
  for (const RecipeStep& step : steps) {
    const MethodSpec* m = FindMethod(step.method);
    if (!m) continue;
    for (const auto& [other, why] : m->excludes) {
      for (const RecipeStep& s : steps) {
        if (s.method == other) return absl::InvalidArgumentError(absl::StrCat("recipe: ", why));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRecipeFitsScheme(const std::vector<RecipeStep>& steps, const Scheme& scheme) {
  for (const RecipeStep& step : steps) {
    const MethodSpec* m = FindMethod(step.method);
    if (!m || !m->fits_scheme) continue;
    QAAS_RETURN_IF_ERROR(m->fits_scheme(step, scheme));
  }
  return absl::OkStatus();
}

std::string CalibrationNeed(const std::vector<RecipeStep>& steps, const Scheme& scheme) {
  for (const RecipeStep& step : steps) {
    const MethodSpec* m = FindMethod(step.method);
    if (m && m->calibrates) return m->name;
  }
  return scheme.activations.is_static_int() ? "static activation scales" : "";
}

}  // namespace qaas::quant
