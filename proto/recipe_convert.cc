#include "proto/recipe_convert.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>

#include "absl/strings/str_cat.h"

namespace qaas {
namespace {

using google::protobuf::FieldDescriptor;

// Whether a proto field can hold an option of `type`.
bool FieldHolds(const FieldDescriptor& f, quant::OptionType type) {
  switch (type) {
    case quant::OptionType::kDouble: return !f.is_repeated() && f.cpp_type() == FieldDescriptor::CPPTYPE_DOUBLE;
    case quant::OptionType::kInt: return !f.is_repeated() && f.cpp_type() == FieldDescriptor::CPPTYPE_INT32;
    case quant::OptionType::kBool: return !f.is_repeated() && f.cpp_type() == FieldDescriptor::CPPTYPE_BOOL;
    case quant::OptionType::kChoice: return !f.is_repeated() && f.cpp_type() == FieldDescriptor::CPPTYPE_STRING;
    case quant::OptionType::kIntList: return f.is_repeated() && f.cpp_type() == FieldDescriptor::CPPTYPE_INT32;
  }
  return false;
}

// The oneof field of v1::RecipeStep for `method`'s options, or null.
const FieldDescriptor* OptionsField(absl::string_view method) {
  const FieldDescriptor* f = v1::RecipeStep::descriptor()->FindFieldByName(std::string(method));
  return f && f->containing_oneof() && f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE ? f : nullptr;
}

}  // namespace

absl::StatusOr<quant::RecipeStep> RecipeStepFromProto(const v1::RecipeStep& step, absl::string_view field) {
  quant::RecipeStep out;
  out.method = step.method();
  const auto* reflection = step.GetReflection();
  const FieldDescriptor* set = reflection->GetOneofFieldDescriptor(step, v1::RecipeStep::descriptor()->FindOneofByName("options"));
  if (!set) return out;
  if (set->name() != step.method()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": options do not belong to method '", step.method(), "' (they are ", set->name(), "'s)"));
  }
  const quant::MethodSpec* method = quant::FindMethod(step.method());
  const google::protobuf::Message& options = reflection->GetMessage(step, set);
  const auto* r = options.GetReflection();
  const auto* d = options.GetDescriptor();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const quant::OptionSpec* spec = method ? quant::FindOption(*method, f->name()) : nullptr;
    if (!spec || !FieldHolds(*f, spec->type)) {
      return absl::InternalError(absl::StrCat("job.proto's ", d->name(), ".", f->name(),
                                              " is not an option of the same type in the method table's ",
                                              step.method()));
    }
    switch (spec->type) {
      case quant::OptionType::kDouble:
        if (r->GetDouble(options, f) != 0) out.Set(spec->name, r->GetDouble(options, f));
        break;
      case quant::OptionType::kInt:
        if (r->GetInt32(options, f) != 0) out.Set(spec->name, static_cast<int>(r->GetInt32(options, f)));
        break;
      case quant::OptionType::kBool:
        if (r->GetBool(options, f)) out.Set(spec->name, true);
        break;
      case quant::OptionType::kChoice:
        if (!r->GetString(options, f).empty()) out.Set(spec->name, r->GetString(options, f));
        break;
      case quant::OptionType::kIntList:
        if (r->FieldSize(options, f) > 0) {
          std::vector<int> list;
          for (int j = 0; j < r->FieldSize(options, f); ++j) list.push_back(r->GetRepeatedInt32(options, f, j));
          out.Set(spec->name, std::move(list));
        }
        break;
    }
  }
  return out;
}

absl::StatusOr<v1::RecipeStep> RecipeStepToProto(const quant::RecipeStep& step) {
  v1::RecipeStep out;
  out.set_method(step.method);
  if (step.options.empty()) return out;
  const FieldDescriptor* field = OptionsField(step.method);
  if (!field) return absl::InternalError(absl::StrCat("job.proto's RecipeStep has no options for ", step.method));
  google::protobuf::Message* options = out.GetReflection()->MutableMessage(&out, field);
  const auto* r = options->GetReflection();
  for (const auto& [name, value] : step.options) {
    const FieldDescriptor* f = options->GetDescriptor()->FindFieldByName(name);
    if (!f || !FieldHolds(*f, static_cast<quant::OptionType>(value.index()))) {
      return absl::InternalError(absl::StrCat("job.proto's ", options->GetDescriptor()->name(), " has no field ", name,
                                              " of type ", quant::OptionTypeName(static_cast<quant::OptionType>(value.index()))));
    }
    switch (static_cast<quant::OptionType>(value.index())) {
      case quant::OptionType::kDouble: r->SetDouble(options, f, std::get<double>(value)); break;
      case quant::OptionType::kInt: r->SetInt32(options, f, std::get<int>(value)); break;
      case quant::OptionType::kBool: r->SetBool(options, f, std::get<bool>(value)); break;
      case quant::OptionType::kChoice: r->SetString(options, f, std::get<std::string>(value)); break;
      case quant::OptionType::kIntList:
        r->ClearField(options, f);
        for (int v : std::get<std::vector<int>>(value)) r->AddInt32(options, f, v);
        break;
    }
  }
  return out;
}

}  // namespace qaas
