#include "server/spec_validation.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/recipe_convert.h"
#include "proto/scheme_convert.h"
#include "quant/artifact_format.h"
#include "quant/eval/task_table.h"
#include "quant/method_table.h"
#include "quant/model/config.h"
#include "quant/recipe_rules.h"
#include "quant/util/status_macros.h"
#include "server/placement.h"
#include "storage/location.h"
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

// Every symlink on the path resolved, for the part of it that exists; the
// rest appended as written (the path is absolute and normalised, no "..").
std::string ResolvedPath(const std::string& path) {
  std::error_code error;
  const std::filesystem::path resolved = std::filesystem::weakly_canonical(path, error);
  return error ? path : resolved.lexically_normal().string();
}

// A config.json larger than this is not a model's config (the largest real
// ones are a few KiB); it is refused rather than read into memory.
constexpr uint64_t kMaxConfigBytes = 1 << 20;

// The config.json of the file:// model directory `uri`, read beneath the
// allowed root that holds it (a directory swapped for a symlink cannot make
// the server read outside the roots).
absl::StatusOr<std::string> ReadModelConfig(const std::string& uri, const storage::FileRoots& roots) {
  auto location = storage::OpenLocation(uri, roots);
  if (!location.ok()) return Invalid("model", location.status().message());
  const std::string key = location->Key("config.json");
  auto info = location->store->Stat(key);
  if (absl::IsNotFound(info.status())) {
    auto listed = location->store->List(location->ListPrefix());
    if (!listed.ok() || listed->empty()) {
      return Invalid("model", absl::StrCat("model directory '", uri,
                                           "' does not exist or holds no files (a model directory holds "
                                           "config.json and its weights)"));
    }
    return Invalid("model", absl::StrCat("'", uri, "' has no config.json"));
  }
  if (!info.ok()) return Invalid("model", absl::StrCat(uri, "/config.json: ", info.status().message()));
  if (info->size > kMaxConfigBytes) {
    return Invalid("model", absl::StrCat(uri, "/config.json is ", info->size, " bytes; a model config is at most ",
                                         kMaxConfigBytes));
  }
  auto text = location->store->Read(key);
  if (!text.ok()) return Invalid("model", absl::StrCat(uri, "/config.json: ", text.status().message()));
  return *std::move(text);
}

// Expands a preset into recipe steps, then checks every step against the
// method table (method, options and their bounds, order); `steps` receives
// them as the table's.
absl::Status ValidateRecipe(v1::JobSpec* spec, std::vector<quant::RecipeStep>* steps) {
  if (!spec->preset().empty()) {
    const quant::Preset* preset = quant::FindPreset(spec->preset());
    if (!preset) {
      std::vector<std::string> names;
      for (const quant::Preset* p : quant::Presets()) names.push_back(p->name);
      return Invalid("preset", absl::StrCat("unknown preset '", spec->preset(), "' (known: ",
                                            absl::StrJoin(names, ", "), ")"));
    }
    std::vector<v1::RecipeStep> expansion;
    for (const quant::RecipeStep& s : preset->steps) {
      QAAS_ASSIGN_OR_RETURN(auto step, RecipeStepToProto(s));
      expansion.push_back(std::move(step));
    }
    if (spec->recipe_size() == 0) {
      for (auto& s : expansion) *spec->add_recipe() = std::move(s);
    } else {
      // Validation is idempotent: a preset with its own expansion is fine.
      bool same = spec->recipe_size() == static_cast<int>(expansion.size());
      for (int i = 0; same && i < spec->recipe_size(); ++i) {
        same = spec->recipe(i).SerializeAsString() == expansion[i].SerializeAsString();
      }
      if (!same) return Invalid("preset", "give a preset or recipe steps, not both");
    }
  }
  if (spec->recipe_size() == 0) return Invalid("recipe", "required (a preset such as \"rtn\" or steps)");
  steps->clear();
  for (int i = 0; i < spec->recipe_size(); ++i) {
    const std::string field = absl::StrCat("recipe[", i, "]");
    // An unknown method is named before its options are read.
    QAAS_RETURN_IF_ERROR(quant::CheckStepOptions(quant::RecipeStep{spec->recipe(i).method(), {}}, field));
    QAAS_ASSIGN_OR_RETURN(auto step, RecipeStepFromProto(spec->recipe(i), field));
    steps->push_back(std::move(step));
  }
  return quant::CheckRecipe(*steps);  // "recipe[i].<method>.<option>: ..." or "recipe: ..."
}

absl::Status ValidateScheme(v1::JobSpec* spec, const std::vector<quant::RecipeStep>& steps) {
  QAAS_ASSIGN_OR_RETURN(auto scheme, SchemeFromProto(spec->scheme()));
  if (!scheme.activations.enabled() && !scheme.kv_cache.enabled() && !scheme.weights.enabled()) {
    return Invalid("scheme", absl::StrCat("'", scheme.ToString(), "' quantizes nothing"));
  }
  if (scheme.weights.format == quant::NumberFormat::kFp8E5M2) {
    return absl::UnimplementedError(absl::StrCat("scheme ", scheme.ToString(),
                                                 ": FP8 E5M2 weights are not implemented (FP8 weights are E4M3: "
                                                 "Wfp8; or MXFP8 E5M2: Wmxfp8e5m2)"));
  }
  QAAS_RETURN_IF_ERROR(quant::CheckRecipeFitsScheme(steps, scheme));  // "scheme ...: ..."
  *spec->mutable_scheme() = SchemeToProto(scheme);
  return absl::OkStatus();
}

}  // namespace

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
  // Both resolved: the path (as far as it exists, so an output directory not
  // made yet resolves through its parents) must stay inside a root's real
  // path. A root or a path reached through a symlink is fine; a symlink
  // inside a root that points outside it is not.
  const std::string real = ResolvedPath(*path);
  for (const auto& root : roots) {
    if (storage::PathIsWithin(real, ResolvedPath(root))) return absl::OkStatus();
  }
  return Invalid(field, absl::StrCat("uri '", uri, "' is outside the server's allowed file roots (",
                                     absl::StrJoin(roots, ", "), ")"));
}

absl::Status ValidateJobSpec(const ValidationOptions& options, v1::JobSpec* spec) {
  if (spec->model().empty()) return Invalid("model", "required (uri of a Hugging Face model directory)");
  QAAS_RETURN_IF_ERROR(ValidateUri("model", spec->model(), options.file_roots));
  // A file:// model's config.json is read here with the worker's own parser,
  // so a config it would refuse (absurd sizes, a missing field) fails now,
  // not minutes later; its context bounds the sequence lengths below.
  int context = 0;
  std::vector<int64_t> input_widths;  // of the model's linears, when its config is readable here
  if (absl::StartsWith(spec->model(), "file:")) {
    QAAS_ASSIGN_OR_RETURN(const std::string text, ReadModelConfig(spec->model(), options.file_roots));
    auto parsed_config = quant::ParseModelConfig(text);
    if (!parsed_config.ok()) return Annotate(parsed_config.status(), absl::StrCat("model: ", spec->model()));
    context = parsed_config->max_position_embeddings;
    input_widths = quant::LinearInputWidths(*parsed_config);
  }
  // A sequence length within the model's context (0: the default, capped).
  auto check_seq_len = [&](const std::string& field, int seq_len) -> absl::Status {
    if (seq_len < 0 || seq_len == 1 || seq_len > kMaxSeqLen) {
      return Invalid(field, absl::StrCat("must be 0 (default) or 2..", kMaxSeqLen, ", got ", seq_len));
    }
    if (context > 0 && seq_len > context) {
      return Invalid(field, absl::StrCat(seq_len, " exceeds the model's context (max_position_embeddings ", context,
                                         ")"));
    }
    return absl::OkStatus();
  };
  // A file:// dataset must be a non-empty regular file now (the worker
  // re-checks at use: it may change meanwhile).
  auto check_dataset = [&](const std::string& field, const std::string& uri) -> absl::Status {
    QAAS_RETURN_IF_ERROR(ValidateUri(field, uri, options.file_roots));
    if (!absl::StartsWith(uri, "file:")) return absl::OkStatus();
    auto object = storage::OpenObject(uri, options.file_roots);
    if (!object.ok()) return Invalid(field, object.status().message());
    auto info = object->location.store->Stat(object->key);
    if (absl::IsNotFound(info.status()) && absl::StrContains(info.status().message(), "a directory")) {
      return Invalid(field, absl::StrCat("'", uri, "' is not a regular file (a directory)"));
    }
    if (absl::IsNotFound(info.status())) return Invalid(field, absl::StrCat("'", uri, "' does not exist"));
    if (absl::IsFailedPrecondition(info.status())) {
      return Invalid(field, absl::StrCat("'", uri, "' is not a regular file (", info.status().message(), ")"));
    }
    if (!info.ok()) return Annotate(info.status(), field);
    if (info->size == 0) return Invalid(field, absl::StrCat("'", uri, "' is empty"));
    return absl::OkStatus();
  };
  std::vector<quant::RecipeStep> steps;
  QAAS_RETURN_IF_ERROR(ValidateRecipe(spec, &steps));
  QAAS_RETURN_IF_ERROR(ValidateScheme(spec, steps));
  {
    // The format is resolved here, so the stored job says what it writes.
    QAAS_ASSIGN_OR_RETURN(const quant::Scheme scheme, SchemeFromProto(spec->scheme()));
    auto format = quant::ResolveArtifactFormat(spec->artifact().format(), scheme, steps, input_widths);
    if (!format.ok()) return Invalid("artifact.format", format.status().message());
    spec->mutable_artifact()->set_format(*format);
  }

  auto* calib = spec->mutable_calibration();
  if (!calib->dataset().empty()) QAAS_RETURN_IF_ERROR(check_dataset("calibration.dataset", calib->dataset()));
  if (calib->dataset().empty()) {
    QAAS_ASSIGN_OR_RETURN(auto scheme, SchemeFromProto(spec->scheme()));  // normalized by ValidateScheme
    if (const std::string need = quant::CalibrationNeed(steps, scheme); !need.empty()) {
      return Invalid("calibration.dataset", absl::StrCat("required: ", need, " calibrates on it"));
    }
  }
  if (calib->num_samples() == 0) calib->set_num_samples(128);
  if (calib->num_samples() < 0 || calib->num_samples() > kMaxSamples) {
    return Invalid("calibration.num_samples", absl::StrCat("must be 1..", kMaxSamples, ", got ", calib->num_samples()));
  }
  QAAS_RETURN_IF_ERROR(check_seq_len("calibration.seq_len", calib->seq_len()));
  if (calib->expert_calibration().empty()) calib->set_expert_calibration("routed");
  if (calib->expert_calibration() != "routed" && calib->expert_calibration() != "all_tokens") {
    return Invalid("calibration.expert_calibration",
                   absl::StrCat("must be \"routed\" or \"all_tokens\", got '", calib->expert_calibration(), "'"));
  }
  if (calib->min_calibration_tokens() == 0) calib->set_min_calibration_tokens(16);
  if (calib->min_calibration_tokens() < 0) {
    return Invalid("calibration.min_calibration_tokens",
                   absl::StrCat("must be positive (0 = 16), got ", calib->min_calibration_tokens()));
  }
  for (int i = 0; i < spec->evaluation_size(); ++i) {
    const auto& e = spec->evaluation(i);
    const std::string field = absl::StrCat("evaluation[", i, "]");
    if (e.dataset().empty()) return Invalid(field + ".dataset", "required");
    QAAS_RETURN_IF_ERROR(check_dataset(field + ".dataset", e.dataset()));
    QAAS_RETURN_IF_ERROR(check_seq_len(field + ".seq_len", e.seq_len()));
    if (e.max_windows() < 0) return Invalid(field + ".max_windows", "must not be negative");
  }
  if (spec->has_tasks()) {
    if (spec->tasks().names_size() > 0 && spec->tasks().data().empty()) {
      spec->mutable_tasks()->set_data(options.default_task_data);
    }
    const auto& t = spec->tasks();
    if (t.names().empty() && (!t.data().empty() || t.limit() != 0 || t.max_length() != 0)) {
      return Invalid("tasks.names", "required when tasks are set (one or more of " + quant::KnownTaskNames() + ")");
    }
    std::set<std::string> seen;
    for (int i = 0; i < t.names_size(); ++i) {
      const std::string field = absl::StrCat("tasks.names[", i, "]");
      const quant::TaskInfo* task = quant::FindTask(t.names(i));
      if (!task) {
        return Invalid(field, quant::UnknownTaskMessage(t.names(i)));
      }
      if (!seen.insert(t.names(i)).second) return Invalid(field, absl::StrCat("'", t.names(i), "' is named twice"));
      if (t.data().empty()) {
        return Invalid("tasks.data", "required: the uri prefix of the task files (this server has no --task_data)");
      }
      QAAS_RETURN_IF_ERROR(check_dataset("tasks.data", quant::TaskFileUri(t.data(), *task)));
    }
    if (t.limit() < 0) return Invalid("tasks.limit", absl::StrCat("must be 0 (all) or positive, got ", t.limit()));
    if (t.max_length() < 0 || t.max_length() == 1 || t.max_length() > kMaxSeqLen) {
      return Invalid("tasks.max_length", absl::StrCat("must be 0 (the model's context) or 2..", kMaxSeqLen, ", got ",
                                                      t.max_length()));
    }
  }
  if (!spec->output().empty()) {
    QAAS_RETURN_IF_ERROR(ValidateUri("output", spec->output(), options.file_roots));
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

uint64_t EstimateJobMemory(const v1::JobSpec& spec, const std::vector<std::string>& roots) {
  if (!absl::StartsWith(spec.model(), "file:")) return 0;
  auto text = ReadModelConfig(spec.model(), roots);
  if (!text.ok()) return 0;
  auto config = quant::ParseModelConfig(*text);
  if (!config.ok()) return 0;
  const int context = config->max_position_embeddings > 0 ? config->max_position_embeddings : 2048;
  auto seq = [&](int requested) { return static_cast<int64_t>(requested > 0 ? requested : std::min(2048, context)); };
  MemoryEstimateInput m;
  m.hidden_size = config->hidden_size;
  m.intermediate_size = config->intermediate_size;
  m.num_experts = config->moe.num_experts;
  m.expert_intermediate_size = config->moe.expert_intermediate_size;
  m.shared_expert_intermediate_size = config->moe.shared_expert_intermediate_size;
  m.vocab_size = config->vocab_size;
  if (!spec.calibration().dataset().empty()) {
    const int samples = spec.calibration().num_samples() > 0 ? spec.calibration().num_samples() : 128;
    m.calibration_tokens = samples * seq(spec.calibration().seq_len());
  }
  for (const auto& e : spec.evaluation()) {
    const int64_t len = seq(e.seq_len());
    m.evaluation_seq_len = std::max(m.evaluation_seq_len, len);
    int64_t tokens = 0;
    if (absl::StartsWith(e.dataset(), "file:")) {
      auto object = storage::OpenObject(e.dataset(), roots);
      if (object.ok()) {
        auto info = object->location.store->Stat(object->key);
        if (info.ok()) tokens = static_cast<int64_t>(info->size / 4);
      }
    }
    if (e.max_windows() > 0) tokens = tokens > 0 ? std::min(tokens, e.max_windows() * len) : e.max_windows() * len;
    m.evaluation_tokens += tokens;
  }
  // Zero-shot tasks: two more streams, about a token per 4 bytes of their files.
  for (const std::string& name : spec.tasks().names()) {
    const quant::TaskInfo* task = quant::FindTask(name);
    if (!task || !absl::StartsWith(spec.tasks().data(), "file:")) continue;
    auto object = storage::OpenObject(quant::TaskFileUri(spec.tasks().data(), *task), roots);
    if (!object.ok()) continue;
    auto info = object->location.store->Stat(object->key);
    if (!info.ok()) continue;
    int64_t tokens = static_cast<int64_t>(info->size / 4);
    if (spec.tasks().limit() > 0) tokens = std::min<int64_t>(tokens, int64_t{spec.tasks().limit()} * 1024);
    m.evaluation_tokens += tokens;
  }
  for (const auto& step : spec.recipe()) m.omniquant |= step.method() == "omniquant";
  return EstimatePipelineMemory(m);
}

}  // namespace qaas::server
