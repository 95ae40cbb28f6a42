#include "quant/recipe_rules.h"

#include "absl/strings/str_cat.h"

namespace qaas::quant {

bool IsTransformMethod(absl::string_view method) { return method == "smoothquant" || method == "rptq"; }

absl::Status CheckRecipeOrder(const std::vector<std::string>& methods) {
  const std::string* weight_method = nullptr;
  for (const std::string& m : methods) {
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
  if (weight_method && *weight_method == "omniquant") {
    for (const std::string& m : methods) {
      if (m == "rptq") {
        return absl::InvalidArgumentError(
            "recipe: omniquant learns its own channel scales on the norms' outputs; it does not combine with rptq's "
            "reordered per-cluster activation ranges");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckRecipeFitsScheme(const std::vector<std::string>& methods, const Scheme& scheme) {
  for (const std::string& m : methods) {
    if (m == "rptq" && scheme.activations.format != NumberFormat::kInt) {
      return absl::InvalidArgumentError(absl::StrCat("scheme ", scheme.ToString(),
                                                     ": rptq needs integer activations (e.g. W4A8), got ",
                                                     NumberFormatName(scheme.activations.format)));
    }
    if (m == "omniquant" && scheme.weights.enabled() && scheme.weights.format != NumberFormat::kInt) {
      return absl::InvalidArgumentError(absl::StrCat("scheme ", scheme.ToString(),
                                                     ": omniquant learns clipping of integer weight ranges (e.g. "
                                                     "W4A16g128), not ", NumberFormatName(scheme.weights.format),
                                                     " weights"));
    }
    if (m == "omniquant" && scheme.activations.is_static_int()) {
      return absl::InvalidArgumentError(absl::StrCat("scheme ", scheme.ToString(),
                                                     ": omniquant trains with dynamic activation quantizers; drop "
                                                     "_static"));
    }
    if (m == "adadim" && scheme.weights.is_mx()) {
      return absl::InvalidArgumentError(absl::StrCat("scheme ", scheme.ToString(),
                                                     ": AdaDim chooses integer group axes; MX blocks are fixed"));
    }
  }
  return absl::OkStatus();
}

std::string CalibrationNeed(const std::vector<std::string>& methods, const Scheme& scheme) {
  for (const std::string& m : methods) {
    if (m == "gptq" || m == "adadim" || m == "omniquant" || IsTransformMethod(m)) return m;
  }
  return scheme.activations.is_static_int() ? "static activation scales" : "";
}

}  // namespace qaas::quant
