#include "quant/artifact_format.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

absl::Status NotExpressible(const Scheme& scheme, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("format compressed-tensors cannot store scheme ", scheme.ToString(), ": ", why));
}

}  // namespace

bool IsCtMx(const TensorQuant& q) {
  return q.format == NumberFormat::kMxFp &&
         (q.bits == 4 || (q.bits == 8 && (q.exponent_bits == 0 || q.exponent_bits == 4)));
}

absl::Status CompressedTensorsFits(const Scheme& s, const std::vector<RecipeStep>& recipe,
                                   const std::vector<int64_t>& input_widths) {
  for (const RecipeStep& step : recipe) {
    if (step.method == "rptq") {
      return NotExpressible(s, "RPTQ reorders channels (reorder_index), which only a runtime that applies the "
                               "reorder can load; use format gptq (its qaas form)");
    }
    if (step.method == "adadim") {
      return NotExpressible(s, "AdaDim may choose per-input-channel groups, which the format has no form for; "
                               "use format gptq");
    }
    if (step.method == "gptq" && step.Get("act_order", false) && !step.Get("static_groups", false)) {
      return NotExpressible(s, "GPTQ's act_order without static_groups permutes the groups (g_idx), which "
                               "compressed-tensors no longer stores; set static_groups or use format gptq");
    }
  }
  const TensorQuant& w = s.weights;
  const TensorQuant& a = s.activations;
  if (!w.enabled()) return NotExpressible(s, "it stores quantized weights, and this scheme keeps them float");
  if (w.is_mx()) {
    if (!IsCtMx(w)) return NotExpressible(s, "its MX weights are MXFP4 (E2M1) and MXFP8 (E4M3)");
    if (a.enabled() && !IsCtMx(a)) {
      return NotExpressible(s, "MX weights go with float activations or MXFP4/MXFP8 (E4M3) activations");
    }
  } else if (w.format == NumberFormat::kInt) {
    if (w.granularity != Granularity::kPerChannel && w.granularity != Granularity::kPerGroup) {
      return NotExpressible(s, "integer weights are stored per channel or per group");
    }
    if (a.enabled()) {
      const bool int8_kernel = w.bits == 8 && w.symmetric && w.granularity == Granularity::kPerChannel &&
                               a.format == NumberFormat::kInt && a.bits == 8 && a.symmetric &&
                               (a.granularity == Granularity::kPerToken || a.is_static_int());
      if (!int8_kernel) {
        return NotExpressible(s, "with quantized activations it stores vLLM's int8 kernels' form: symmetric 8-bit "
                                 "weights per channel (W8A8_sym) and symmetric 8-bit activations per token or "
                                 "static per tensor");
      }
    }
  } else if (w.format == NumberFormat::kFp8E4M3) {
    const bool fp8_acts = a.format == NumberFormat::kFp8E4M3 && a.granularity == Granularity::kPerToken;
    if (a.enabled() && !fp8_acts) {
      return NotExpressible(s, "FP8 weights go with float activations or FP8 (E4M3) activations per token");
    }
  } else {
    return NotExpressible(s, "its weights are integers, FP8 (E4M3) or MXFP4/MXFP8");
  }
  const TensorQuant& kv = s.kv_cache;
  if (kv.is_mx() && !IsCtMx(kv)) return NotExpressible(s, "an MX KV cache is MXFP4 or MXFP8 (E4M3)");
  const int64_t group = w.is_mx() ? 32 : w.granularity == Granularity::kPerGroup ? w.group_size : 0;
  for (int64_t width : input_widths) {
    if (group > 0 && width % group != 0) {
      return NotExpressible(s, absl::StrCat("a linear of this model has ", width, " input features, not a multiple of ",
                                            w.is_mx() ? "the MX block size " : "the group size ", group,
                                            ", and the format has no ragged last group; use a group size that "
                                            "divides every layer's width, or format gptq"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ResolveArtifactFormat(const std::string& format, const Scheme& scheme,
                                                  const std::vector<RecipeStep>& recipe,
                                                  const std::vector<int64_t>& input_widths) {
  const bool fp8_weights = scheme.weights.format == NumberFormat::kFp8E4M3 ||
                           scheme.weights.format == NumberFormat::kFp8E5M2;
  if (format == "gptq") {
    if (fp8_weights) {
      return absl::InvalidArgumentError(absl::StrCat("format gptq cannot store scheme ", scheme.ToString(),
                                                     ": it holds integer and MX weights; FP8 weights go to "
                                                     "format compressed-tensors"));
    }
    return format;
  }
  if (format == "compressed-tensors") {
    QAAS_RETURN_IF_ERROR(CompressedTensorsFits(scheme, recipe, input_widths));
    return format;
  }
  if (format != "auto" && !format.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown artifact format '", format, "' (known: auto, gptq, compressed-tensors)"));
  }
  if (scheme.weight_only() && scheme.weights.format == NumberFormat::kInt) return std::string("gptq");
  if (fp8_weights) {  // only compressed-tensors stores them: its verdict is the job's
    QAAS_RETURN_IF_ERROR(CompressedTensorsFits(scheme, recipe, input_widths));
    return std::string("compressed-tensors");
  }
  return CompressedTensorsFits(scheme, recipe, input_widths).ok() ? std::string("compressed-tensors")
                                                                  : std::string("gptq");
}

}  // namespace qaas::quant
