// A model with LLM-like activation outliers, made from any model without
// changing its function. Large LLMs have a few hidden channels whose norm
// outputs are 10-100x larger than the rest (the "systematic outliers" that
// SmoothQuant and RPTQ address); small models such as stories260k have none,
// so activation quantization looks easy on them. This transform scales a few
// channels of every pre-attention and pre-MLP norm's weight (and bias) by
// factors in [min_factor, max_factor] and divides the matching input columns
// of the linears reading that norm by the same factors: the float model
// computes the same function (up to float rounding), but per-token activation
// quantization now loses most of its resolution to the outlier channels.
#ifndef QAAS_QUANT_MODEL_OUTLIERS_H_
#define QAAS_QUANT_MODEL_OUTLIERS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace qaas::quant {

struct OutlierOptions {
  int channels = 4;  // outlier channels (the same in every layer, as in LLMs)
  double min_factor = 30;
  double max_factor = 100;
  uint64_t seed = 0;
};

// Writes the transformed model (config, tokenizer files, one
// model.safetensors in the stored dtype) to `out_dir`, plus
// qaas_outliers.json recording the channels and factors, which it returns.
// InvalidArgument for bad options (naming them) or a model we cannot read.
absl::StatusOr<nlohmann::json> MakeOutlierModel(const std::string& model_dir, const std::string& out_dir,
                                                const OutlierOptions& options);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_OUTLIERS_H_
