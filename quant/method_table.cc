#include "quant/method_table.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace qaas::quant {
namespace {

OptionSpec Real(std::string name, double def, double min, double max, bool min_open, std::string flag,
                std::string help) {
  OptionSpec s;
  s.name = std::move(name);
  s.type = OptionType::kDouble;
  s.default_value = def;
  s.min = min;
  s.max = max;
  s.min_open = min_open;
  s.flag = std::move(flag);
  s.help = std::move(help);
  return s;
}

OptionSpec Integer(std::string name, int def, int min, int max, std::string flag, std::string help) {
  OptionSpec s = Real(std::move(name), 0, min, max, false, std::move(flag), std::move(help));
  s.type = OptionType::kInt;
  s.default_value = def;
  return s;
}

// Booleans default to false (an unset proto3 bool).
OptionSpec Switch(std::string name, std::string flag, std::string help) {
  OptionSpec s = Real(std::move(name), 0, 0, 0, false, std::move(flag), std::move(help));
  s.type = OptionType::kBool;
  s.default_value = false;
  return s;
}

OptionSpec Choice(std::string name, std::vector<std::string> choices, std::string flag, std::string help) {
  OptionSpec s = Real(std::move(name), 0, 0, 0, false, std::move(flag), std::move(help));
  s.type = OptionType::kChoice;
  s.default_value = choices.front();
  s.choices = std::move(choices);
  return s;
}

OptionSpec IntList(std::string name, std::vector<int> def, int min, int max, std::string flag, std::string help) {
  OptionSpec s = Real(std::move(name), 0, min, max, false, std::move(flag), std::move(help));
  s.type = OptionType::kIntList;
  s.length = static_cast<int>(def.size());
  s.default_value = std::move(def);
  return s;
}

// GPTQ's options: its own, and AdaDim's over GPTQ.
std::vector<OptionSpec> GptqOptionSpecs() {
  return {Real("damp", 0.01, 0, 1, true, "damp", "damping as a fraction of mean(diag(H)) (percdamp)"),
          Integer("block_size", 128, 1, 65536, "blocksize", "lazy-batch block of columns"),
          Switch("act_order", "act_order", "quantize columns by decreasing Hessian diagonal (desc_act)"),
          Switch("static_groups", "static_groups", "group parameters from the unmodified weights")};
}

absl::Status SchemeError(const Scheme& scheme, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("scheme ", scheme.ToString(), ": ", why));
}

bool UsesGptqOrderings(const RecipeStep& step) {
  return step.Get("act_order", false) || step.Get("static_groups", false);
}

std::vector<MethodSpec> MakeTable() {
  std::vector<MethodSpec> t;
  {
    MethodSpec m;
    m.name = "rtn";
    m.kind = MethodKind::kWeightQuantizer;
    m.help = "round-to-nearest: min-max ranges, each weight rounded to its nearest code";
    m.presets = {{"rtn", {{"rtn", {}}}}};
    t.push_back(std::move(m));
  }
  {
    MethodSpec m;
    m.name = "gptq";
    m.kind = MethodKind::kWeightQuantizer;
    m.calibrates = true;
    m.help = "GPTQ (Frantar et al. 2022): columns in order, each one's rounding error spread over the rest "
             "with the inverse Hessian";
    m.needs = "integer or MX weights (not FP8); act_order and static_groups: not with MX weights";
    m.options = GptqOptionSpecs();
    m.fits_scheme = [](const RecipeStep& step, const Scheme& scheme) {
      if (scheme.weights.format == NumberFormat::kFp8E4M3 || scheme.weights.format == NumberFormat::kFp8E5M2) {
        return SchemeError(scheme, absl::StrCat(step.method, ": GPTQ quantizes integer and MX weights; FP8 weights "
                                                             "take RTN (one scale per channel)"));
      }
      if (scheme.weights.is_mx() && UsesGptqOrderings(step)) {
        return SchemeError(scheme, absl::StrCat(step.method, ": GPTQ act_order and static_groups do not apply to "
                                                             "MX blocks"));
      }
      return absl::OkStatus();
    };
    m.presets = {{"gptq", {{"gptq", {}}}}};
    t.push_back(std::move(m));
  }
  {
    MethodSpec m;
    m.name = "adadim";
    m.kind = MethodKind::kWeightQuantizer;
    m.calibrates = true;
    m.help = "AdaDim (Heo et al. 2023): per linear, groups per output or per input channel, whichever gives "
             "the smaller block-output error; over RTN or GPTQ (then GPTQ's options apply)";
    m.needs = "integer weights (not MX or FP8)";
    m.options = {Choice("base", {"rtn", "gptq"}, "adadim_base", "the weight quantizer it augments")};
    for (OptionSpec& o : GptqOptionSpecs()) {
      o.help += " (base gptq)";
      m.options.push_back(std::move(o));
    }
    m.fits_scheme = [](const RecipeStep&, const Scheme& scheme) {
      if (scheme.weights.enabled() && scheme.weights.format != NumberFormat::kInt) {
        return SchemeError(scheme, "AdaDim chooses integer group axes; MX blocks and FP8 channels are fixed");
      }
      return absl::OkStatus();
    };
    m.presets = {{"adadim-rtn", {{"adadim", {{"base", std::string("rtn")}}}}},
                 {"adadim-gptq", {{"adadim", {{"base", std::string("gptq")}}}}}};
    t.push_back(std::move(m));
  }
  {
    MethodSpec m;
    m.name = "smoothquant";
    m.kind = MethodKind::kTransform;
    m.calibrates = true;
    m.help = "SmoothQuant (Xiao et al. 2023): activation outliers migrated into the weights by per-channel "
             "scales folded into the norms";
    m.options = {Real("alpha", 0.5, 0, 1, false, "alpha", "migration strength")};
    m.presets = {{"smoothquant-rtn", {{"smoothquant", {}}, {"rtn", {}}}},
                 {"smoothquant-gptq", {{"smoothquant", {}}, {"gptq", {}}}}};
    t.push_back(std::move(m));
  }
  {
    MethodSpec m;
    m.name = "rptq";
    m.kind = MethodKind::kTransform;
    m.calibrates = true;
    m.help = "RPTQ (Yuan et al. 2023): activation channels clustered by range, static parameters per cluster, "
             "channels reordered so each cluster is contiguous";
    m.needs = "integer activations";
    m.options = {IntList("clusters", {32, 4, 4, 32, 32}, 1, 65536, "rptq_clusters",
                         "clusters at the reorder points R1..R5 (R2 unused)")};
    m.fits_scheme = [](const RecipeStep&, const Scheme& scheme) {
      if (scheme.activations.format != NumberFormat::kInt) {
        return SchemeError(scheme, absl::StrCat("rptq needs integer activations (e.g. W4A8), got ",
                                                NumberFormatName(scheme.activations.format)));
      }
      return absl::OkStatus();
    };
    m.presets = {{"rptq", {{"rptq", {}}, {"rtn", {}}}}};
    t.push_back(std::move(m));
  }
  {
    MethodSpec m;
    m.name = "omniquant";
    m.kind = MethodKind::kWeightQuantizer;
    m.calibrates = true;
    m.help = "OmniQuant (Shao et al. 2024): per block, learned weight clipping (LWC) and, with quantized "
             "activations or KV cache, learned equivalent transforms (LET)";
    m.needs = "integer weights, dynamic activations; not with rptq";
    m.options = {Integer("epochs", 0, 0, 1000, "epochs",
                         "epochs per layer; 0 = the paper's 20 (40 for weights of 2 bits or fewer)"),
                 Real("lwc_lr", 1e-2, 0, 1, true, "lwc_lr", "learning rate of the clipping (LWC)"),
                 Real("let_lr", 5e-3, 0, 1, true, "let_lr", "learning rate of the equivalent transforms (LET)")};
    m.fits_scheme = [](const RecipeStep&, const Scheme& scheme) {
      if (scheme.weights.enabled() && scheme.weights.format != NumberFormat::kInt) {
        return SchemeError(scheme, absl::StrCat("omniquant learns clipping of integer weight ranges (e.g. "
                                                "W4A16g128), not ",
                                                NumberFormatName(scheme.weights.format), " weights"));
      }
      if (scheme.activations.is_static_int()) {
        return SchemeError(scheme, "omniquant trains with dynamic activation quantizers; drop _static");
      }
      return absl::OkStatus();
    };
    m.excludes = {{"rptq", "omniquant learns its own channel scales on the norms' outputs; it does not combine "
                           "with rptq's reordered per-cluster activation ranges"}};
    m.presets = {{"omniquant", {{"omniquant", {}}}}};
    t.push_back(std::move(m));
  }
  return t;
}

template <typename T>
RecipeStep& SetValue(RecipeStep* step, const std::string& option, T value) {
  step->options[option] = std::move(value);
  return *step;
}

}  // namespace

const std::vector<MethodSpec>& Methods() {
  static const auto* kTable = new std::vector<MethodSpec>(MakeTable());
  return *kTable;
}

const MethodSpec* FindMethod(absl::string_view name) {
  for (const MethodSpec& m : Methods()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

const OptionSpec* FindOption(const MethodSpec& method, absl::string_view name) {
  for (const OptionSpec& o : method.options) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

std::vector<std::string> MethodNames() {
  std::vector<std::string> names;
  for (const MethodSpec& m : Methods()) names.push_back(m.name);
  return names;
}

std::vector<const Preset*> Presets() {
  std::vector<const Preset*> presets;
  for (const MethodSpec& m : Methods()) {
    for (const Preset& p : m.presets) presets.push_back(&p);
  }
  return presets;
}

const Preset* FindPreset(absl::string_view name) {
  for (const Preset* p : Presets()) {
    if (p->name == name) return p;
  }
  return nullptr;
}

RecipeStep& RecipeStep::Set(const std::string& option, double value) { return SetValue(this, option, value); }
RecipeStep& RecipeStep::Set(const std::string& option, int value) {
  const MethodSpec* m = FindMethod(method);
  const OptionSpec* spec = m ? FindOption(*m, option) : nullptr;
  if (spec && spec->type == OptionType::kDouble) return SetValue(this, option, static_cast<double>(value));
  return SetValue(this, option, value);
}
RecipeStep& RecipeStep::Set(const std::string& option, bool value) { return SetValue(this, option, value); }
RecipeStep& RecipeStep::Set(const std::string& option, const char* value) {
  return SetValue(this, option, std::string(value));
}
RecipeStep& RecipeStep::Set(const std::string& option, std::string value) {
  return SetValue(this, option, std::move(value));
}
RecipeStep& RecipeStep::Set(const std::string& option, std::vector<int> value) {
  return SetValue(this, option, std::move(value));
}

const OptionValue* RecipeStep::Value(absl::string_view option) const {
  const MethodSpec* m = FindMethod(method);
  const OptionSpec* spec = m ? FindOption(*m, option) : nullptr;
  if (!spec) return nullptr;
  auto it = options.find(std::string(option));
  return it != options.end() ? &it->second : &spec->default_value;
}

std::string OptionTypeName(OptionType type) {
  switch (type) {
    case OptionType::kDouble: return "number";
    case OptionType::kInt: return "integer";
    case OptionType::kBool: return "bool";
    case OptionType::kChoice: return "choice";
    case OptionType::kIntList: return "integer list";
  }
  return "";
}

std::string MethodKindName(MethodKind kind) {
  return kind == MethodKind::kTransform ? "transform" : "weight quantizer";
}

std::string FormatOptionValue(const OptionValue& value) {
  switch (value.index()) {
    case 0: return absl::StrCat(std::get<double>(value));
    case 1: return absl::StrCat(std::get<int>(value));
    case 2: return std::get<bool>(value) ? "true" : "false";
    case 3: return std::get<std::string>(value);
    case 4: return absl::StrJoin(std::get<std::vector<int>>(value), ",");
  }
  return "";
}

std::string FormatBounds(const OptionSpec& spec) {
  switch (spec.type) {
    case OptionType::kDouble:
      return absl::StrCat(spec.min_open ? "(" : "[", spec.min, ", ", spec.max, "]");
    case OptionType::kInt: return absl::StrCat(spec.min, "..", spec.max);
    case OptionType::kBool: return "";
    case OptionType::kChoice: return absl::StrJoin(spec.choices, ", ");
    case OptionType::kIntList: return absl::StrCat(spec.length, " values, each ", spec.min, "..", spec.max);
  }
  return "";
}

absl::StatusOr<OptionValue> ParseOptionValue(const OptionSpec& spec, absl::string_view text) {
  switch (spec.type) {
    case OptionType::kDouble: {
      double v = 0;
      if (!absl::SimpleAtod(text, &v)) return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a number"));
      return OptionValue(v);
    }
    case OptionType::kInt: {
      int v = 0;
      if (!absl::SimpleAtoi(text, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not an integer"));
      }
      return OptionValue(v);
    }
    case OptionType::kBool: {
      bool v = false;
      if (!absl::SimpleAtob(text, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not true or false"));
      }
      return OptionValue(v);
    }
    case OptionType::kChoice: return OptionValue(std::string(text));
    case OptionType::kIntList: {
      std::vector<int> list;
      for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
        int v = 0;
        if (!absl::SimpleAtoi(part, &v)) {
          return absl::InvalidArgumentError(absl::StrCat("'", part, "' is not an integer"));
        }
        list.push_back(v);
      }
      return OptionValue(std::move(list));
    }
  }
  return absl::InternalError("unknown option type");
}

absl::Status CheckOptionValue(const OptionSpec& spec, const OptionValue& value) {
  if (value.index() != static_cast<size_t>(spec.type)) {
    return absl::InvalidArgumentError(absl::StrCat("must be a", OptionTypeName(spec.type)[0] == 'i' ? "n " : " ",
                                                   OptionTypeName(spec.type), ", got ", FormatOptionValue(value)));
  }
  auto out_of_range = [&](double v) {
    return spec.min_open ? !(v > spec.min && v <= spec.max) : !(v >= spec.min && v <= spec.max);
  };
  switch (spec.type) {
    case OptionType::kDouble:
    case OptionType::kInt: {
      const double v = spec.type == OptionType::kDouble ? std::get<double>(value) : std::get<int>(value);
      if (out_of_range(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("must be ", spec.type == OptionType::kDouble ? "in " : "", FormatBounds(spec), ", got ",
                         FormatOptionValue(value)));
      }
      return absl::OkStatus();
    }
    case OptionType::kBool: return absl::OkStatus();
    case OptionType::kChoice:
      for (const std::string& c : spec.choices) {
        if (c == std::get<std::string>(value)) return absl::OkStatus();
      }
      return absl::InvalidArgumentError(absl::StrCat("must be one of ", FormatBounds(spec), ", got '",
                                                     std::get<std::string>(value), "'"));
    case OptionType::kIntList: {
      const auto& list = std::get<std::vector<int>>(value);
      if (static_cast<int>(list.size()) != spec.length) {
        return absl::InvalidArgumentError(absl::StrCat("must be ", spec.length, " values, got ", list.size()));
      }
      for (int v : list) {
        if (out_of_range(v)) {
          return absl::InvalidArgumentError(absl::StrCat("values must be in ", spec.min, "..", spec.max, ", got ", v));
        }
      }
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::Status CheckStepOptions(const RecipeStep& step, absl::string_view field) {
  const MethodSpec* m = FindMethod(step.method);
  if (!m) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": unknown method '", step.method, "' (known: ",
                                                   absl::StrJoin(MethodNames(), ", "), ")"));
  }
  for (const auto& [name, value] : step.options) {
    const OptionSpec* spec = FindOption(*m, name);
    if (!spec) {
      std::vector<std::string> names;
      for (const OptionSpec& o : m->options) names.push_back(o.name);
      return absl::InvalidArgumentError(absl::StrCat(field, ".", m->name, ": no option '", name, "' (options: ",
                                                     names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
    }
    if (absl::Status st = CheckOptionValue(*spec, value); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".", m->name, ".", name, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

std::string MethodTableMarkdown() {
  std::string md =
      "| method | kind | calibrates | needs | presets | what it does |\n"
      "|---|---|---|---|---|---|\n";
  for (const MethodSpec& m : Methods()) {
    std::vector<std::string> presets;
    for (const Preset& p : m.presets) presets.push_back(absl::StrCat("`", p.name, "`"));
    absl::StrAppend(&md, "| `", m.name, "` | ", MethodKindName(m.kind), " | ", m.calibrates ? "yes" : "no", " | ",
                    m.needs, " | ", absl::StrJoin(presets, ", "), " | ", m.help, " |\n");
  }
  absl::StrAppend(&md,
                  "\n"
                  "| option | type | default | bounds | flag | meaning |\n"
                  "|---|---|---|---|---|---|\n");
  for (const MethodSpec& m : Methods()) {
    for (const OptionSpec& o : m.options) {
      absl::StrAppend(&md, "| `", m.name, ".", o.name, "` | ", OptionTypeName(o.type), " | ",
                      FormatOptionValue(o.default_value), " | ", FormatBounds(o), " | `--", o.flag, "` | ", o.help,
                      " |\n");
    }
  }
  return md;
}

}  // namespace qaas::quant
