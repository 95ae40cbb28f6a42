// The method table: every quantization method qaas runs, with its kind, its
// calibration need, the schemes it runs under, its presets and its options
// (defaults, bounds, command-line flag, help). Pure C++ (no libtorch, no
// protobuf), like scheme.h. Everything that knows about methods reads it:
// recipe_rules (order, scheme fit, calibration), the server's JobSpec
// validation, the proto conversion (proto/recipe_convert.h) the worker and
// qaasctl use, both CLIs' flags and help (cli/method_flags.h), the pipeline's
// option checks, and docs/api.md's method table (a test compares it).
//
// Adding a method: its files (quant/methods/<name>.{h,cc}: the algorithm, its
// options struct and <Name>OptionsOf(const RecipeStep&)), one row in
// method_table.cc, its options message and RecipeStep oneof field (named like
// the method, with the rows' option names) in proto/qaas/v1/job.proto (then
// scripts/gen-python), and its call in the pipeline. Regenerate docs/api.md's
// table with QAAS_UPDATE_DOCS=1 build/tests/quant/qaas_quant_test
// --gtest_filter='MethodTable*'.
#ifndef QAAS_QUANT_METHOD_TABLE_H_
#define QAAS_QUANT_METHOD_TABLE_H_

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quant/scheme.h"

namespace qaas::quant {

enum class MethodKind {
  kTransform,        // function-preserving, on the float layer, before the weight quantizer
  kWeightQuantizer,  // at most one per recipe (RTN when none is given)
};

// An option's type; its values are the OptionValue alternative of the same index.
enum class OptionType { kDouble, kInt, kBool, kChoice, kIntList };
using OptionValue = std::variant<double, int, bool, std::string, std::vector<int>>;

struct OptionSpec {
  std::string name;  // also the field of the method's options message in job.proto
  OptionType type = OptionType::kDouble;
  OptionValue default_value;
  // kDouble, kInt, and each element of kIntList: in [min, max], or (min, max]
  // when min_open.
  double min = 0, max = 0;
  bool min_open = false;
  std::vector<std::string> choices;  // kChoice: the allowed values, the default first
  int length = 0;                    // kIntList: exactly this many elements
  std::string flag;                  // qaas-quantize's and qaasctl's flag (without "--")
  std::string help;
};

// One step of a recipe: a method of the table and the options given for it;
// the others take the table's defaults.
struct RecipeStep {
  std::string method;
  std::map<std::string, OptionValue> options;  // given options, by name

  // Gives an option; an int given for a double option becomes a double.
  RecipeStep& Set(const std::string& option, double value);
  RecipeStep& Set(const std::string& option, int value);
  RecipeStep& Set(const std::string& option, bool value);
  RecipeStep& Set(const std::string& option, const char* value);
  RecipeStep& Set(const std::string& option, std::string value);
  RecipeStep& Set(const std::string& option, std::vector<int> value);

  // The option's value: the given one, else the table's default; null when
  // the method (or the option) is not in the table.
  const OptionValue* Value(absl::string_view option) const;
  // Value(option) as a T, or `fallback` when there is none of that type.
  template <typename T>
  T Get(absl::string_view option, T fallback) const {
    const OptionValue* v = Value(option);
    const T* t = v ? std::get_if<T>(v) : nullptr;
    return t ? *t : fallback;
  }
  std::string Get(absl::string_view option, const char* fallback) const {
    return Get<std::string>(option, fallback);
  }

  bool operator==(const RecipeStep& o) const { return method == o.method && options == o.options; }
};

struct Preset {
  std::string name;
  std::vector<RecipeStep> steps;
};

struct MethodSpec {
  std::string name;  // also RecipeStep's oneof field for its options in job.proto
  MethodKind kind = MethodKind::kWeightQuantizer;
  bool calibrates = false;  // needs calibration.dataset
  std::string help;         // what it does (docs, --help)
  std::string needs;        // what it needs of the scheme and the recipe, in words (docs)
  std::vector<OptionSpec> options;
  // InvalidArgument "scheme <scheme>: <method> ..." when `step` cannot run
  // under `scheme`; null: any scheme.
  std::function<absl::Status(const RecipeStep& step, const Scheme& scheme)> fits_scheme;
  // Methods it does not share a recipe with, and why (the error's text).
  std::vector<std::pair<std::string, std::string>> excludes;
  std::vector<Preset> presets;  // presets named after it
};

// The table, in documentation order; and lookups (null when absent).
const std::vector<MethodSpec>& Methods();
const MethodSpec* FindMethod(absl::string_view name);
const OptionSpec* FindOption(const MethodSpec& method, absl::string_view name);
std::vector<std::string> MethodNames();
// Every row's presets, in table order.
std::vector<const Preset*> Presets();
const Preset* FindPreset(absl::string_view name);

// InvalidArgument "must be ..., got ..." unless `value` has the option's type
// and is within its bounds (NaN is not).
absl::Status CheckOptionValue(const OptionSpec& spec, const OptionValue& value);
// The step's method is in the table and every given option is one of its
// options, within bounds. InvalidArgument naming the field:
// "<field>: unknown method ..." or "<field>.<method>.<option>: ...".
absl::Status CheckStepOptions(const RecipeStep& step, absl::string_view field);

// Text forms, as flags take them and the docs show them: "0.01", "128",
// "true", "gptq", "32,4,4,32,32". ParseOptionValue checks the syntax only.
std::string FormatOptionValue(const OptionValue& value);
absl::StatusOr<OptionValue> ParseOptionValue(const OptionSpec& spec, absl::string_view text);
// "number", "integer", "bool", "choice", "integer list".
std::string OptionTypeName(OptionType type);
// "(0, 1]", "0..1000", "rtn, gptq", "5 × 1..65536"; "" for a bool.
std::string FormatBounds(const OptionSpec& spec);
std::string MethodKindName(MethodKind kind);  // "transform", "weight quantizer"

// docs/api.md's method and option tables (markdown), from the table.
std::string MethodTableMarkdown();

}  // namespace qaas::quant

#endif  // QAAS_QUANT_METHOD_TABLE_H_
