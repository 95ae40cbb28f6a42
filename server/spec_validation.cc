#include "server/spec_validation.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/scheme_convert.h"
#include "quant/model/config.h"
#include "quant/recipe_rules.h"
#include "server/placement.h"
#include "storage/uri.h"

namespace qaas::server {
namespace {

constexpr int kMaxSamples = 100000;
constexpr int kMaxSeqLen = 1 << 20;
constexpr int kMaxLabels = 64;
constexpr size_t kMaxLabelBytes = 256;

absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

// The recipe steps of a preset.
// A preset's steps: method names, "adadim:<base>" for AdaDim over a base.
const std::map<std::string, std::vector<std::string>>& Presets() {
  static const auto* kPresets = new std::map<std::string, std::vector<std::string>>{
      {"rtn", {"rtn"}},
      {"gptq", {"gptq"}},
      {"adadim-rtn", {"adadim:rtn"}},
      {"adadim-gptq", {"adadim:gptq"}},
      {"smoothquant-rtn", {"smoothquant", "rtn"}},
      {"smoothquant-gptq", {"smoothquant", "gptq"}},
      {"rptq", {"rptq", "rtn"}},
      {"omniquant", {"omniquant"}},
  };
  return *kPresets;
}

v1::RecipeStep PresetStep(const std::string& entry) {
  v1::RecipeStep step;
  const size_t colon = entry.find(':');
  step.set_method(entry.substr(0, colon));
  if (colon != std::string::npos) step.mutable_adadim()->set_base(entry.substr(colon + 1));
  return step;
}

std::string RealPathOr(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : path;
}

// Which options message a method accepts (0 = none given).
bool OptionsMatch(const v1::RecipeStep& step) {
  switch (step.options_case()) {
    case v1::RecipeStep::OPTIONS_NOT_SET: return true;
    case v1::RecipeStep::kRtn: return step.method() == "rtn";
    case v1::RecipeStep::kGptq: return step.method() == "gptq";
    case v1::RecipeStep::kAdadim: return step.method() == "adadim";
    case v1::RecipeStep::kSmoothquant: return step.method() == "smoothquant";
    case v1::RecipeStep::kRptq: return step.method() == "rptq";
    case v1::RecipeStep::kOmniquant: return step.method() == "omniquant";
  }
  return false;
}

std::vector<std::string> RecipeMethods(const v1::JobSpec& spec) {
  std::vector<std::string> methods;
  for (const auto& step : spec.recipe()) methods.push_back(step.method());
  return methods;
}

absl::Status ValidateRecipe(v1::JobSpec* spec) {
  if (!spec->preset().empty()) {
    auto it = Presets().find(spec->preset());
    if (it == Presets().end()) {
      std::vector<std::string> names;
      for (const auto& [n, s] : Presets()) names.push_back(n);
      return Invalid("preset", absl::StrCat("unknown preset '", spec->preset(), "' (known: ",
                                            absl::StrJoin(names, ", "), ")"));
    }
    if (spec->recipe_size() == 0) {
      for (const auto& m : it->second) *spec->add_recipe() = PresetStep(m);
    } else {
      // Validation is idempotent: a preset with its own expansion is fine.
      bool same = spec->recipe_size() == static_cast<int>(it->second.size());
      for (int i = 0; same && i < spec->recipe_size(); ++i) {
        same = spec->recipe(i).SerializeAsString() == PresetStep(it->second[i]).SerializeAsString();
      }
      if (!same) return Invalid("preset", "give a preset or recipe steps, not both");
    }
  }
  if (spec->recipe_size() == 0) return Invalid("recipe", "required (a preset such as \"rtn\" or steps)");
  for (int i = 0; i < spec->recipe_size(); ++i) {
    const auto& step = spec->recipe(i);
    const std::string field = absl::StrCat("recipe[", i, "]");
    const auto& known = KnownMethods();
    if (std::find(known.begin(), known.end(), step.method()) == known.end()) {
      return Invalid(field, absl::StrCat("unknown method '", step.method(), "' (known: ",
                                         absl::StrJoin(known, ", "), ")"));
    }
    if (!OptionsMatch(step)) return Invalid(field, absl::StrCat("options do not belong to method '", step.method(), "'"));
    if (!MethodImplemented(step.method())) {
      return absl::UnimplementedError(
          absl::StrCat(field, ": method '", step.method(), "' is not implemented in this build yet"));
    }
  }
  if (auto st = quant::CheckRecipeOrder(RecipeMethods(*spec)); !st.ok()) return st;  // "recipe: ..."
  return absl::OkStatus();
}

absl::Status ValidateScheme(v1::JobSpec* spec) {
  auto scheme = SchemeFromProto(spec->scheme());
  if (!scheme.ok()) return scheme.status();
  if (!scheme->activations.enabled() && !scheme->kv_cache.enabled() && !scheme->weights.enabled()) {
    return Invalid("scheme", absl::StrCat("'", scheme->ToString(), "' quantizes nothing"));
  }
  if (scheme->weights.format == quant::NumberFormat::kFp8E4M3 ||
      scheme->weights.format == quant::NumberFormat::kFp8E5M2) {
    return absl::UnimplementedError(absl::StrCat("scheme ", scheme->ToString(),
                                                 ": per-tensor FP8 weights are not implemented (use MXFP8: "
                                                 "Wmxfp8); FP8 activations and KV cache are"));
  }
  if (auto st = quant::CheckRecipeFitsScheme(RecipeMethods(*spec), *scheme); !st.ok()) return st;  // "scheme ...: ..."
  *spec->mutable_scheme() = SchemeToProto(*scheme);
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& KnownMethods() {
  static const auto* kMethods =
      new std::vector<std::string>{"rtn", "gptq", "adadim", "smoothquant", "rptq", "omniquant"};
  return *kMethods;
}

bool MethodImplemented(const std::string& method) {
  return method == "rtn" || method == "gptq" || method == "adadim" || method == "smoothquant" || method == "rptq" ||
         method == "omniquant";
}

absl::Status ValidateUri(const std::string& field, const std::string& uri,
                         const std::vector<std::string>& roots) {
  auto parsed = storage::ParseUri(uri);
  if (!parsed.ok()) return Invalid(field, parsed.status().message());
  if (parsed->scheme == "s3") {
    if (parsed->authority.empty()) return Invalid(field, absl::StrCat("uri '", uri, "' names no bucket"));
    return absl::OkStatus();  // reachability and credentials are the worker's to check
  }
  if (parsed->scheme != "file") return Invalid(field, absl::StrCat("unsupported uri scheme '", parsed->scheme, "'"));
  auto path = storage::NormalizeLocalPath(parsed->path);
  if (!path.ok()) return Invalid(field, path.status().message());
  // Lexically and after resolving symlinks, the path must stay inside a root.
  const std::string real = RealPathOr(*path);
  for (const auto& root : roots) {
    if (storage::PathIsWithin(*path, root) && storage::PathIsWithin(real, RealPathOr(root))) {
      return absl::OkStatus();
    }
  }
  return Invalid(field, absl::StrCat("uri '", uri, "' is outside the server's allowed file roots (",
                                     absl::StrJoin(roots, ", "), ")"));
}

absl::Status ValidateJobSpec(const ValidationOptions& options, v1::JobSpec* spec) {
  if (spec->model().empty()) return Invalid("model", "required (uri of a Hugging Face model directory)");
  if (auto st = ValidateUri("model", spec->model(), options.file_roots); !st.ok()) return st;
  if (auto parsed = storage::ParseUri(spec->model()); parsed.ok() && parsed->scheme == "file") {
    struct stat st;
    const std::string config = parsed->path + "/config.json";
    if (::stat(parsed->path.c_str(), &st) != 0) {
      return Invalid("model", absl::StrCat("model directory '", spec->model(), "' does not exist"));
    }
    if (::stat(config.c_str(), &st) != 0) {
      return Invalid("model", absl::StrCat("'", spec->model(), "' has no config.json"));
    }
  }
  if (auto st = ValidateRecipe(spec); !st.ok()) return st;
  if (auto st = ValidateScheme(spec); !st.ok()) return st;

  auto* calib = spec->mutable_calibration();
  if (!calib->dataset().empty()) {
    if (auto st = ValidateUri("calibration.dataset", calib->dataset(), options.file_roots); !st.ok()) return st;
  }
  if (calib->dataset().empty()) {
    auto scheme = SchemeFromProto(spec->scheme());  // normalized by ValidateScheme
    if (!scheme.ok()) return scheme.status();
    if (const std::string need = quant::CalibrationNeed(RecipeMethods(*spec), *scheme); !need.empty()) {
      return Invalid("calibration.dataset", absl::StrCat("required: ", need, " calibrates on it"));
    }
  }
  for (const auto& step : spec->recipe()) {
    if (step.has_adadim() && !step.adadim().base().empty() && step.adadim().base() != "rtn" &&
        step.adadim().base() != "gptq") {
      return Invalid("recipe.adadim.base", absl::StrCat("must be \"rtn\" or \"gptq\", got '", step.adadim().base(), "'"));
    }
    if (step.has_smoothquant() && (step.smoothquant().alpha() < 0 || step.smoothquant().alpha() > 1)) {
      return Invalid("recipe.smoothquant.alpha", absl::StrCat("must be in [0, 1], got ", step.smoothquant().alpha()));
    }
    if (step.has_rptq() && step.rptq().clusters_size() != 0) {
      if (step.rptq().clusters_size() != 5) {
        return Invalid("recipe.rptq.clusters", absl::StrCat("give 5 counts (R1..R5) or none, got ",
                                                            step.rptq().clusters_size()));
      }
      for (int c : step.rptq().clusters()) {
        if (c < 1 || c > 65536) return Invalid("recipe.rptq.clusters", absl::StrCat("must be 1..65536, got ", c));
      }
    }
    if (step.has_omniquant()) {
      const auto& oq = step.omniquant();
      if (oq.epochs() < 0 || oq.epochs() > 1000) {
        return Invalid("recipe.omniquant.epochs", absl::StrCat("must be 0 (default: 20, 40 at 2 bits) to 1000, got ",
                                                                oq.epochs()));
      }
      if (!(oq.lwc_lr() >= 0 && oq.lwc_lr() <= 1) || !(oq.let_lr() >= 0 && oq.let_lr() <= 1)) {
        return Invalid("recipe.omniquant", absl::StrCat("lwc_lr and let_lr must be in (0, 1] or 0 (default), got ",
                                                         oq.lwc_lr(), " and ", oq.let_lr()));
      }
    }
    if (step.has_gptq() && (step.gptq().damp() < 0 || step.gptq().damp() > 1 || step.gptq().block_size() < 0)) {
      return Invalid("recipe.gptq", "damp must be in [0, 1] and block_size non-negative");
    }
  }
  if (calib->num_samples() == 0) calib->set_num_samples(128);
  if (calib->num_samples() < 0 || calib->num_samples() > kMaxSamples) {
    return Invalid("calibration.num_samples", absl::StrCat("must be 1..", kMaxSamples, ", got ", calib->num_samples()));
  }
  if (calib->seq_len() < 0 || calib->seq_len() > kMaxSeqLen) {
    return Invalid("calibration.seq_len", absl::StrCat("must be 0 (default) or 2..", kMaxSeqLen, ", got ", calib->seq_len()));
  }
  for (int i = 0; i < spec->evaluation_size(); ++i) {
    const auto& e = spec->evaluation(i);
    const std::string field = absl::StrCat("evaluation[", i, "]");
    if (e.dataset().empty()) return Invalid(field + ".dataset", "required");
    if (auto st = ValidateUri(field + ".dataset", e.dataset(), options.file_roots); !st.ok()) return st;
    if (e.seq_len() < 0 || e.seq_len() == 1 || e.seq_len() > kMaxSeqLen) {
      return Invalid(field + ".seq_len", absl::StrCat("must be 0 (default) or 2..", kMaxSeqLen, ", got ", e.seq_len()));
    }
    if (e.max_windows() < 0) return Invalid(field + ".max_windows", "must not be negative");
  }
  if (!spec->output().empty()) {
    if (auto st = ValidateUri("output", spec->output(), options.file_roots); !st.ok()) return st;
  }
  const auto& device = spec->resources().device();
  if (!device.empty() && device != "cpu" && device != "cuda") {
    return Invalid("resources.device", absl::StrCat("must be \"cpu\", \"cuda\" or empty, got '", device, "'"));
  }
  if (spec->priority() < -1000 || spec->priority() > 1000) {
    return Invalid("priority", absl::StrCat("must be -1000..1000, got ", spec->priority()));
  }
  if (spec->labels_size() > kMaxLabels) return Invalid("labels", absl::StrCat("at most ", kMaxLabels));
  for (const auto& [k, v] : spec->labels()) {
    if (k.empty() || k.size() > kMaxLabelBytes || v.size() > kMaxLabelBytes) {
      return Invalid("labels", absl::StrCat("keys must be 1..", kMaxLabelBytes, " bytes and values at most ", kMaxLabelBytes));
    }
  }
  if (spec->idempotency_key().size() > kMaxLabelBytes) {
    return Invalid("idempotency_key", absl::StrCat("at most ", kMaxLabelBytes, " bytes"));
  }
  return absl::OkStatus();
}

uint64_t EstimateJobMemory(const v1::JobSpec& spec) {
  auto model = storage::ParseUri(spec.model());
  if (!model.ok() || model->scheme != "file") return 0;
  std::ifstream in(model->path + "/config.json");
  if (!in) return 0;
  std::stringstream text;
  text << in.rdbuf();
  auto config = quant::ParseModelConfig(text.str());
  if (!config.ok()) return 0;
  const int context = config->max_position_embeddings > 0 ? config->max_position_embeddings : 2048;
  auto seq = [&](int requested) { return static_cast<int64_t>(requested > 0 ? requested : std::min(2048, context)); };
  MemoryEstimateInput m;
  m.hidden_size = config->hidden_size;
  m.intermediate_size = config->intermediate_size;
  m.vocab_size = config->vocab_size;
  if (!spec.calibration().dataset().empty()) {
    const int samples = spec.calibration().num_samples() > 0 ? spec.calibration().num_samples() : 128;
    m.calibration_tokens = samples * seq(spec.calibration().seq_len());
  }
  for (const auto& e : spec.evaluation()) {
    const int64_t len = seq(e.seq_len());
    m.evaluation_seq_len = std::max(m.evaluation_seq_len, len);
    int64_t tokens = 0;
    if (auto uri = storage::ParseUri(e.dataset()); uri.ok() && uri->scheme == "file") {
      struct stat st;
      if (::stat(uri->path.c_str(), &st) == 0) tokens = st.st_size / 4;
    }
    if (e.max_windows() > 0) tokens = tokens > 0 ? std::min(tokens, e.max_windows() * len) : e.max_windows() * len;
    m.evaluation_tokens += tokens;
  }
  for (const auto& step : spec.recipe()) m.omniquant |= step.method() == "omniquant";
  return EstimatePipelineMemory(m);
}

}  // namespace qaas::server
