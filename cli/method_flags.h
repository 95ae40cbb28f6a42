// The method table's options as command-line flags (quant/method_table.h,
// OptionSpec::flag), the same in qaas-quantize and qaasctl: --damp 0.02,
// --damp=0.02, --act_order, --act_order=false, --noact_order,
// --rptq_clusters 8,4,4,8,8. A flag applies to every step of --recipe whose
// method has that option. They are not absl flags: a method's row alone
// makes them, and --help lists them from the table.
#ifndef QAAS_CLI_METHOD_FLAGS_H_
#define QAAS_CLI_METHOD_FLAGS_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/method_table.h"

namespace qaas::cli {

// The method flags given: flag name (without dashes) -> value text.
using MethodFlags = std::map<std::string, std::string>;

// Takes the table's flags (one or two dashes) out of argv, so that
// absl::ParseCommandLine does not see them; stops at "--". InvalidArgument
// for a flag that needs a value and has none.
absl::StatusOr<MethodFlags> TakeMethodFlags(int* argc, char** argv);

// The steps of comma-separated `methods`, each with the flags naming one of
// its options, parsed and within the table's bounds. InvalidArgument naming
// the flag otherwise, and for a flag that no step of the recipe takes.
absl::StatusOr<std::vector<quant::RecipeStep>> RecipeFromFlags(absl::string_view methods, const MethodFlags& flags);

// The steps of preset `name` (method_table.h) with the flags applied over
// them: a preset is recipe steps with defaults, and a flag overrides its
// option. InvalidArgument naming the known presets for an unknown one, and
// as RecipeFromFlags for the flags.
absl::StatusOr<std::vector<quant::RecipeStep>> RecipeFromPreset(absl::string_view name, const MethodFlags& flags);

// --help text: each method, its presets and its options' flags with their
// defaults and bounds.
std::string MethodFlagsHelp();

}  // namespace qaas::cli

#endif  // QAAS_CLI_METHOD_FLAGS_H_
