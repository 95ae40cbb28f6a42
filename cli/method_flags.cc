#include "cli/method_flags.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "quant/util/status_macros.h"

namespace qaas::cli {
namespace {

using quant::MethodSpec;
using quant::OptionSpec;
using quant::OptionType;

// The option a flag sets (options sharing a flag have the same spec).
const OptionSpec* FindFlag(absl::string_view flag) {
  for (const MethodSpec& m : quant::Methods()) {
    for (const OptionSpec& o : m.options) {
      if (o.flag == flag) return &o;
    }
  }
  return nullptr;
}

// The methods that have an option with this flag.
std::vector<std::string> MethodsWithFlag(absl::string_view flag) {
  std::vector<std::string> names;
  for (const MethodSpec& m : quant::Methods()) {
    for (const OptionSpec& o : m.options) {
      if (o.flag == flag) names.push_back(m.name);
    }
  }
  return names;
}

}  // namespace

absl::StatusOr<MethodFlags> TakeMethodFlags(int* argc, char** argv) {
  MethodFlags flags;
  int out = 1;
  int i = 1;
  for (; i < *argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg.size() < 2 || arg[0] != '-') {
      argv[out++] = argv[i];
      continue;
    }
    absl::string_view body = arg.substr(absl::StartsWith(arg, "--") ? 2 : 1);
    const size_t eq = body.find('=');
    const absl::string_view name = body.substr(0, eq);
    const OptionSpec* spec = FindFlag(name);
    if (!spec && eq == absl::string_view::npos && absl::StartsWith(name, "no")) {
      const OptionSpec* negated = FindFlag(name.substr(2));
      if (negated && negated->type == OptionType::kBool) {
        flags[std::string(name.substr(2))] = "false";
        continue;
      }
    }
    if (!spec) {
      argv[out++] = argv[i];
      continue;
    }
    if (eq != absl::string_view::npos) {
      flags[std::string(name)] = std::string(body.substr(eq + 1));
    } else if (spec->type == OptionType::kBool) {
      flags[std::string(name)] = "true";
    } else if (i + 1 < *argc) {
      flags[std::string(name)] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
  }
  for (; i < *argc; ++i) argv[out++] = argv[i];
  argv[out] = nullptr;
  *argc = out;
  return flags;
}

namespace {

// Sets each flag on the steps whose method has its option (overriding what
// the step had); `what` names the recipe in the error for a flag no step takes.
absl::Status ApplyFlags(const MethodFlags& flags, absl::string_view what, std::vector<quant::RecipeStep>* steps) {
  std::set<std::string> used;
  for (quant::RecipeStep& step : *steps) {
    const MethodSpec* m = quant::FindMethod(step.method);
    if (!m) continue;
    for (const OptionSpec& o : m->options) {
      auto it = flags.find(o.flag);
      if (it == flags.end()) continue;
      auto value = quant::ParseOptionValue(o, it->second);
      absl::Status st = value.ok() ? quant::CheckOptionValue(o, *value) : value.status();
      if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("--", o.flag, ": ", st.message()));
      step.options[o.name] = *std::move(value);
      used.insert(o.flag);
    }
  }
  for (const auto& [flag, value] : flags) {
    if (used.count(flag)) continue;
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " is an option of ",
                                                   absl::StrJoin(MethodsWithFlag(flag), " and "), ": no step of ",
                                                   what, " takes it"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<quant::RecipeStep>> RecipeFromFlags(absl::string_view methods, const MethodFlags& flags) {
  std::vector<quant::RecipeStep> steps;
  for (absl::string_view method : absl::StrSplit(methods, ',', absl::SkipEmpty())) {
    steps.push_back({std::string(method), {}});
  }
  QAAS_RETURN_IF_ERROR(ApplyFlags(flags, absl::StrCat("the recipe '", methods, "'"), &steps));
  return steps;
}

absl::StatusOr<std::vector<quant::RecipeStep>> RecipeFromPreset(absl::string_view preset, const MethodFlags& flags) {
  const quant::Preset* p = quant::FindPreset(preset);
  if (!p) {
    std::vector<std::string> known;
    for (const quant::Preset* k : quant::Presets()) known.push_back(k->name);
    return absl::InvalidArgumentError(
        absl::StrCat("unknown preset '", preset, "' (known: ", absl::StrJoin(known, ", "), ")"));
  }
  std::vector<quant::RecipeStep> steps = p->steps;
  QAAS_RETURN_IF_ERROR(ApplyFlags(flags, absl::StrCat("the preset '", preset, "'"), &steps));
  return steps;
}

std::string MethodFlagsHelp() {
  std::string help = "Methods (--recipe: comma-separated, transforms first, then at most one weight quantizer):\n";
  for (const MethodSpec& m : quant::Methods()) {
    std::vector<std::string> presets;
    for (const quant::Preset& p : m.presets) presets.push_back(p.name);
    absl::StrAppend(&help, "  ", m.name, ": ", quant::MethodKindName(m.kind), m.calibrates ? ", calibrates" : "",
                    presets.empty() ? "" : absl::StrCat(", presets ", absl::StrJoin(presets, " ")), ". ", m.help,
                    m.needs.empty() ? "" : absl::StrCat("; needs ", m.needs), "\n");
  }
  // One entry per flag, as Abseil lists its flags.
  absl::StrAppend(&help, "Method options (each applies to the steps of --recipe whose method has it):\n");
  std::set<std::string> listed;
  for (const MethodSpec& m : quant::Methods()) {
    for (const OptionSpec& o : m.options) {
      if (!listed.insert(o.flag).second) continue;
      const std::string bounds = quant::FormatBounds(o);
      absl::StrAppend(&help, "    --", o.flag, " (", absl::StrJoin(MethodsWithFlag(o.flag), ", "), ": ", o.help, "; ",
                      quant::OptionTypeName(o.type), bounds.empty() ? "" : absl::StrCat(": ", bounds),
                      "); default: ", quant::FormatOptionValue(o.default_value), ";\n");
    }
  }
  return help;
}

}  // namespace qaas::cli
