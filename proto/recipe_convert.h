// Conversion between the API's qaas.v1.RecipeStep and the method table's
// quant::RecipeStep, by reflection over the step's options message: the
// options field of RecipeStep's oneof is named like the method, and its fields
// like the row's options (quant/method_table.h). Shared by the server
// (validation, presets), the worker (execution) and qaasctl. Torch-free.
#ifndef QAAS_PROTO_RECIPE_CONVERT_H_
#define QAAS_PROTO_RECIPE_CONVERT_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "qaas/v1/job.pb.h"
#include "quant/method_table.h"

namespace qaas {

// The step as the table's: each field of its options message that is not 0,
// "" or false is a given option; the others take the table's defaults.
// InvalidArgument "<field>: options do not belong to method ..." when the
// options message is another method's; Internal when a field of it is not an
// option of the row (job.proto and the table disagree). Does not check the
// method or the bounds (quant::CheckStepOptions does).
absl::StatusOr<quant::RecipeStep> RecipeStepFromProto(const v1::RecipeStep& step, absl::string_view field);

// The reverse: the given options set in the method's options message (no
// options message when none is given). Internal when the method has no
// options field or an option no field of its type.
absl::StatusOr<v1::RecipeStep> RecipeStepToProto(const quant::RecipeStep& step);

}  // namespace qaas

#endif  // QAAS_PROTO_RECIPE_CONVERT_H_
