#include "quant/pipeline.h"

#include "quant/artifact_format.h"

#include "quant/formats/int_quant.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "quant/data/text_dataset.h"
#include "quant/eval/perplexity.h"
#include "quant/eval/task_eval.h"
#include "quant/eval/tasks.h"
#include "quant/export.h"
#include "quant/formats/act_quant.h"
#include "quant/formats/number_format.h"
#include "quant/layer_state.h"
#include "quant/methods/gptq.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/staged_forward.h"
#include "quant/model/tokenizer.h"
#include "quant/recipe_rules.h"
#include "quant/report.h"
#include "quant/util/device.h"
#include "quant/util/finite.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"
#include "quant/weight_quantizer.h"

namespace qaas::quant {

namespace {

// FNV-1a, 64 bits, as hex: identifies an input's content in a resume
// fingerprint (not a security hash: it only tells runs apart).
std::string Fnv1a(absl::string_view data) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return absl::StrFormat("%016x", h);
}

// The step with every option of its method (given or the table's default).
nlohmann::json RecipeStepJson(const RecipeStep& r) {
  nlohmann::json options = nlohmann::json::object();
  if (const MethodSpec* m = FindMethod(r.method)) {
    for (const OptionSpec& o : m->options) options[o.name] = FormatOptionValue(*r.Value(o.name));
  }
  return {{"method", r.method}, {"options", options}};
}

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct EvalStream {
  DatasetRef ref;
  at::Tensor windows;   // int64 [n, T]
  at::Tensor original;  // hidden states through the original model
  at::Tensor quantized; // through the quantized model
};

absl::StatusOr<int> ResolveSeqLen(int requested, int context, const std::string& what) {
  if (requested == 0) return std::min(2048, context);
  if (requested < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " seq_len must be positive, got ", requested));
  }
  if (requested > context) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " seq_len ", requested, " exceeds the model context ", context));
  }
  return requested;
}

// The weights of a layer as the model stores them: corrupt if not finite.
absl::Status CheckLayerFinite(const DecoderLayer& layer, const std::string& prefix,
                              const std::vector<std::string>& linear_names) {
  for (const auto& [name, t] : layer.norms) {
    QAAS_RETURN_IF_ERROR(CheckFinite(t, absl::StatusCode::kDataLoss, absl::StrCat("model tensor ", prefix, name)));
  }
  for (size_t j = 0; j < layer.linears.size(); ++j) {
    const std::string name = absl::StrCat("model tensor ", prefix, linear_names[j]);
    QAAS_RETURN_IF_ERROR(CheckFinite(layer.linears[j].weight, absl::StatusCode::kDataLoss, name + ".weight"));
    QAAS_RETURN_IF_ERROR(CheckFinite(layer.linears[j].bias, absl::StatusCode::kDataLoss, name + ".bias"));
  }
  return absl::OkStatus();
}

// The dataset's text, errors naming it as the job did (its uri), not by the
// local copy the worker staged.
absl::StatusOr<std::string> LoadDataset(const DatasetRef& ref) {
  auto text = LoadDatasetText(ref.path);
  if (text.ok() || ref.name.empty() || ref.name == ref.path) return text;
  return absl::Status(text.status().code(), absl::StrReplaceAll(text.status().message(), {{ref.path, ref.name}}));
}

// What QuantizeLinears returns for a layer.
struct QuantizedLinears {
  std::vector<std::optional<QuantizedLinear>> linears;  // none: the linear stays float
  std::vector<LayerReport> reports;
  // The quantized layer's output on calib_ where the staged forward computed
  // it (what ForwardBatched(model, *quantized, calib_, batch_size) gives).
  at::Tensor calib_out;
};

class Pipeline {
 public:
  explicit Pipeline(const PipelineOptions& o) : o_(o) {}

  absl::StatusOr<Report> Run();

 private:
  absl::Status Prepare();
  absl::Status CheckRecipeAndScheme();
  absl::Status MakeLayouts();  // once the config is read
  // Applies the recipe's transforms to `layer` (a float layer) and sets its
  // activation quantizers; `details` receives what they did.
  absl::Status TransformLayer(DecoderLayer* layer, nlohmann::json* details);
  absl::Status QuantizeLayer(int i);
  // How many calibration batches QuantizeLinears stages (0: it recomputes
  // every batch up to each group).
  int64_t StagedBatches() const;
  // The weight quantizer on each linear of `transformed`, group by group;
  // `quantized` starts as `transformed` and ends with every linear quantized.
  absl::StatusOr<QuantizedLinears> QuantizeLinears(int i, const DecoderLayer& original,
                                                   const DecoderLayer& transformed, DecoderLayer* quantized);
  absl::Status ReplayLayer(int i);
  // Writes the layer's checkpoints (each layout's, then state-<i>, which marks
  // it complete) and hands them to on_layer_saved.
  // Writes the layer's packed files (in the checkpoint's form) and its resume
  // state (as the forward holds it).
  absl::Status SaveLayer(int i, const LayerToPack& layer, const LayerRecord& record);
  std::string OutputPath(const std::string& relative) const { return o_.output_dir + "/" + relative; }
  absl::Status Assemble();
  // Reads, encodes and packs the job's tasks (before the model is created).
  absl::Status PrepareTasks(int* max_len);
  // The task streams through the original and/or the quantized layer.
  absl::Status ForwardTasks(const DecoderLayer* original, const DecoderLayer* quantized, const std::string& prefix);
  absl::Status ScoreTasks();
  std::vector<std::string> RecipeNames() const {
    std::vector<std::string> names;
    for (const auto& step : transforms_) names.push_back(step.method);
    names.push_back(weight_step_.method);
    return names;
  }
  void Progress(int layer, const char* step) {
    if (o_.on_progress) o_.on_progress({layer, config_.num_layers, step});
  }
  // Seconds since t, once the device has finished the work queued so far
  // (CUDA runs asynchronously: without the wait a phase would be charged
  // only for queueing its kernels).
  double Elapsed(Clock::time_point t) const {
    Synchronize(device_);
    return SecondsSince(t);
  }

  const PipelineOptions& o_;
  std::vector<RecipeStep> transforms_;  // the recipe's transforms, in order
  RecipeStep weight_step_;  // the recipe's weight quantizer (its last step; RTN when none)
  std::unique_ptr<WeightQuantizer> quantizer_;
  std::unique_ptr<WeightQuantizer> fallback_;  // RTN, for linears that saw too few calibration tokens
  // The artifact's layouts: the job's, and a plain dequantized copy where the
  // quantizer wants one. The first is the artifact the report sizes.
  std::vector<std::unique_ptr<ArtifactLayout>> layouts_;
  at::Device device_ = at::kCPU;  // o_.device resolved, by Prepare
  std::unique_ptr<Checkpoint> ck_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<DecoderModel> model_;  // the architecture, with its head on device_
  at::Tensor calib_;  // hidden states of the calibration stream (quantized model)
  at::Tensor calib_fp_;  // LearnsBlock(): the calibration stream through the float model
  std::vector<EvalStream> evals_;
  // Zero-shot tasks: the packed requests and each batch's hidden states
  // through the original and the quantized model.
  std::optional<TaskEvaluator> tasks_;
  std::vector<at::Tensor> task_original_, task_quantized_;
  double task_seconds_ = 0;
  Report report_;
  Clock::time_point start_ = Clock::now();
  // What a checkpoint must have been made from to be resumed from.
  nlohmann::json fingerprint_;
};

absl::Status Pipeline::CheckRecipeAndScheme() {
  if (o_.recipe.empty()) return absl::InvalidArgumentError("recipe is empty");
  QAAS_RETURN_IF_ERROR(CheckRecipe(o_.recipe));  // the table's methods, options and bounds, the order
  const Scheme& sc = o_.scheme;
  QAAS_RETURN_IF_ERROR(CheckRecipeFitsScheme(o_.recipe, sc));
  weight_step_ = RecipeStep{"rtn", {}};
  for (const auto& step : o_.recipe) {
    if (IsTransformMethod(step.method)) {
      transforms_.push_back(step);
    } else {
      weight_step_ = step;
    }
  }
  if (const std::string need = CalibrationNeed(o_.recipe, sc); !need.empty() && !o_.calibration) {
    return absl::InvalidArgumentError(absl::StrCat(need, " needs calibration data (calibration.dataset)"));
  }
  QAAS_RETURN_IF_ERROR(CheckActivationSpec(sc.activations, "activations"));
  QAAS_RETURN_IF_ERROR(CheckActivationSpec(sc.kv_cache, "kv_cache"));
  if (sc.weights.enabled() && sc.weights.format != NumberFormat::kInt && !sc.weights.is_mx() &&
      sc.weights.format != NumberFormat::kFp8E4M3) {
    return absl::UnimplementedError(absl::StrCat("scheme ", sc.ToString(), ": weight format ",
                                                 NumberFormatName(sc.weights.format),
                                                 " is not implemented (integer, MX or FP8 E4M3 weights)"));
  }
  QAAS_ASSIGN_OR_RETURN(quantizer_, MakeWeightQuantizer(weight_step_, sc));
  QAAS_ASSIGN_OR_RETURN(fallback_, MakeWeightQuantizer(RecipeStep{"rtn", {}}, sc));
  if (o_.expert_calibration != "routed" && o_.expert_calibration != "all_tokens") {
    return absl::InvalidArgumentError(absl::StrCat("expert_calibration '", o_.expert_calibration,
                                                   "' is not one of routed, all_tokens"));
  }
  if (o_.min_calibration_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("min_calibration_tokens must be at least 1, got ",
                                                   o_.min_calibration_tokens));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::MakeLayouts() {
  // "auto" resolves, and compressed-tensors is checked, against the widths
  // of this model's linears (the format has no ragged groups).
  const std::vector<int64_t> widths = LinearInputWidths(config_);
  auto format = o_.artifact_layout == "dequantized"
                    ? absl::StatusOr<std::string>(o_.artifact_layout)
                    : ResolveArtifactFormat(o_.artifact_layout, o_.scheme, o_.recipe, widths);
  if (!format.ok()) return format.status();
  QAAS_ASSIGN_OR_RETURN(auto layout, MakeArtifactLayout(*format));
  layouts_.push_back(std::move(layout));
  if (quantizer_->WantsDequantizedCopy()) {
    QAAS_ASSIGN_OR_RETURN(auto plain, MakeArtifactLayout("dequantized"));
    layouts_.push_back(std::move(plain));
  }
  return absl::OkStatus();
}

absl::Status Pipeline::Prepare() {
  QAAS_ASSIGN_OR_RETURN(device_, ResolveDevice(o_.device));
  ResetPeakMemory(device_);
  QAAS_RETURN_IF_ERROR(CheckRecipeAndScheme());
  QAAS_ASSIGN_OR_RETURN(ck_, Checkpoint::Open(o_.model_dir));
  config_ = ck_->config();
  QAAS_RETURN_IF_ERROR(MakeLayouts());
  if (config_.moe.num_experts > 0) {
    // SmoothQuant and OmniQuant's LET fold into the router too; RPTQ would
    // need one hidden-channel reorder per expert (rptq.cc says so at the
    // layer; here before anything is loaded).
    for (const auto& step : transforms_) {
      if (step.method == "rptq") {
        return absl::UnimplementedError(absl::StrCat("recipe step 'rptq' on a mixture-of-experts model (",
                                                     config_.model_type, ") is not supported: its reorder of the "
                                                     "MLP's hidden channels would be one per expert"));
      }
    }
  }
  QAAS_ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Load(o_.model_dir));
  if (tokenizer_->vocab_size() > config_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", tokenizer_->vocab_size(),
                                                   " pieces but config.json vocab_size is ", config_.vocab_size));
  }

  fingerprint_ = {{"config", Fnv1a(config_.raw_json)}, {"scheme", o_.scheme.ToString()},
                  {"seed", o_.seed}, {"num_samples", o_.num_samples}, {"device", device_.str()},
                  {"batch_size", o_.batch_size}, {"model_bytes", ck_->total_bytes()},
                  {"min_calibration_tokens", o_.min_calibration_tokens},
                  {"expert_calibration", o_.expert_calibration},
                  {"inputs", o_.inputs_fingerprint}};
  for (const auto& step : o_.recipe) fingerprint_["recipe"].push_back(RecipeStepJson(step));
  for (const auto& name : ck_->TensorNames()) {
    auto e = ck_->Entry(name);
    if (e.ok()) fingerprint_["tensors"].push_back({name, DTypeName(e->dtype), e->shape, e->begin});
  }

  const int context = config_.max_position_embeddings;
  int max_len = 1;
  // Evaluation windows: [BOS] + encode(whole file).
  for (const auto& ref : o_.evaluations) {
    EvalStream s;
    s.ref = ref;
    QAAS_ASSIGN_OR_RETURN(s.ref.seq_len, ResolveSeqLen(ref.seq_len, context, "evaluation"));
    QAAS_ASSIGN_OR_RETURN(const std::string text, LoadDataset(ref));
    fingerprint_["evaluations"].push_back({Fnv1a(text), s.ref.seq_len, ref.max_windows});
    if (tokenizer_->bos_id() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("the tokenizer of ", o_.model_dir,
                                                     " has no BOS token, which evaluation windows start with"));
    }
    std::vector<int> ids = tokenizer_->Encode(text);
    ids.insert(ids.begin(), tokenizer_->bos_id());
    auto windows = MakeEvaluationWindows(ids, s.ref.seq_len, ref.max_windows);
    if (!windows.ok()) return absl::InvalidArgumentError(absl::StrCat(ref.name, ": ", windows.status().message()));
    s.windows = *windows;
    max_len = std::max(max_len, s.ref.seq_len);
    evals_.push_back(std::move(s));
  }
  at::Tensor calib_windows;
  if (o_.calibration) {
    QAAS_ASSIGN_OR_RETURN(const int seq_len, ResolveSeqLen(o_.calibration->seq_len, context, "calibration"));
    auto text = LoadDataset(*o_.calibration);
    if (!text.ok()) return Annotate(text.status(), "calibration");
    fingerprint_["calibration"] = {Fnv1a(*text), seq_len};
    QAAS_ASSIGN_OR_RETURN(calib_windows,
                          SampleCalibrationWindows(tokenizer_->Encode(*text), o_.num_samples, seq_len, o_.seed));
    report_.calibration = {{"dataset", o_.calibration->name}, {"num_samples", o_.num_samples},
                           {"seq_len", seq_len}, {"seed", o_.seed}, {"tokens", calib_windows.numel()},
                           {"min_calibration_tokens", o_.min_calibration_tokens},
                           {"expert_calibration", o_.expert_calibration}};
    if (!o_.block_errors && CalibrationNeed(o_.recipe, o_.scheme).empty()) {
      // Nothing needs it (RTN with dynamic activations): the data the job
      // names is still read and checked (bad data fails the job as it would
      // otherwise), but no calibration pass runs.
      report_.calibration["skipped"] =
          "no step of the recipe and nothing in the scheme calibrates (block_errors runs the pass anyway)";
      calib_windows = at::Tensor();
    } else {
      max_len = std::max(max_len, seq_len);
    }
  }
  QAAS_RETURN_IF_ERROR(PrepareTasks(&max_len));
  QAAS_ASSIGN_OR_RETURN(model_, DecoderModel::Create(*ck_, device_, max_len));
  model_->set_experts_observe_all_tokens(o_.expert_calibration == "all_tokens");
  if (calib_windows.defined()) {
    calib_ = model_->Embed(calib_windows);
    QAAS_RETURN_IF_ERROR(CheckFinite(calib_, absl::StatusCode::kDataLoss,
                                     "the model's token embeddings of the calibration windows"));
  }
  if (calib_.defined()) {
    // The windows whose layer forwards QuantizeLinears runs once per layer
    // (staged_forward_bytes); the others run up to each sequential group.
    report_.calibration["staged_windows"] = std::min<int64_t>(calib_.size(0), StagedBatches() * o_.batch_size);
  }
  if (quantizer_->LearnsBlock()) calib_fp_ = calib_;
  for (auto& s : evals_) {
    s.original = model_->Embed(s.windows);
    QAAS_RETURN_IF_ERROR(CheckFinite(s.original, absl::StatusCode::kDataLoss,
                                     absl::StrCat("the model's token embeddings of ", s.ref.name)));
    s.quantized = s.original;
  }
  if (tasks_) {
    task_original_ = tasks_->Embed(*model_);
    for (const at::Tensor& h : task_original_) {
      QAAS_RETURN_IF_ERROR(CheckFinite(h, absl::StatusCode::kDataLoss, "the model's token embeddings of the tasks"));
    }
    task_quantized_ = task_original_;
  }
  return MakeDirs(o_.output_dir + "/checkpoints");
}

namespace {

// `layer`'s forward over `hidden` in batches, for the inputs of the linears
// in `in_group` only (their outputs are not wanted): each batch's forward
// ends as soon as every one of them has seen its input, so gathering a
// sequential group's inputs costs the layer up to that group, not all of it
// (a later group's forward sees its own), and SmoothQuant's statistics cost
// the layer up to the MLP's input. The early end is a private tag
// thrown by the hook below and caught here, never past this function. A
// linear that sees no token in a batch (an expert nothing was routed to)
// lets that batch's forward run to the end.
void ObserveGroupInputs(const DecoderModel& model, const DecoderLayer& layer, const at::Tensor& hidden, int batch,
                        const std::map<std::string, int>& in_group, const LinearInputHook& hook) {
  struct GroupSeen {};
  for (int64_t i = 0; i < hidden.size(0); i += batch) {
    const int64_t n = std::min<int64_t>(batch, hidden.size(0) - i);
    std::set<std::string> seen;
    try {
      model.LayerForward(layer, hidden.narrow(0, i, n), [&](const std::string& name, const at::Tensor& x) {
        hook(name, x);
        if (in_group.count(name) && seen.insert(name).second && seen.size() == in_group.size()) throw GroupSeen();
      });
    } catch (const GroupSeen&) {
    }
  }
}

}  // namespace

absl::Status Pipeline::TransformLayer(DecoderLayer* layer, nlohmann::json* details) {
  const DecoderModel& model = *model_;
  const std::vector<std::string>& names = model.LinearNames();
  // Each activation point is seen through its observers' inputs (its first
  // consumer's; a mixture of experts' every expert's, together every token).
  std::map<std::string, ActPoint> point_of;
  for (int p = 0; p < kNumActPoints; ++p) {
    for (int j : model.ObserversOf(static_cast<ActPoint>(p))) point_of[names[j]] = static_cast<ActPoint>(p);
  }
  // Per-channel ranges of every point (and of V for RPTQ) on the calibration
  // stream through the float `layer`. An expert's ranges are always its
  // routed tokens' (what it computes on when serving), whatever
  // expert_calibration says for the weight quantizer's statistics.
  std::array<at::Tensor, kNumActPoints> point_lo, point_hi;  // each point's scalar range, by collect
  const std::vector<ActPoint> kAllActPoints = {ActPoint::kAttnIn, ActPoint::kAttnOut, ActPoint::kMlpIn,
                                               ActPoint::kMlpHidden};
  // `points`: the points whose ranges are wanted (their observers' inputs);
  // each batch's forward ends once it has seen them all (and V's input for
  // RPTQ's v_out).
  auto collect = [&](ChannelRange* v_out, std::vector<ActPoint> points) {
    std::array<ChannelRange, kNumActPoints> ranges;
    std::array<bool, kNumActPoints> mixed_widths{};
    point_lo = {};
    point_hi = {};
    const int v_index = model.ProducersOf(ActPoint::kAttnOut)[0];
    const std::string& v_name = names[v_index];
    model_->set_experts_observe_all_tokens(false);
    struct Restore {
      DecoderModel* model;
      bool all;
      ~Restore() { model->set_experts_observe_all_tokens(all); }
    } restore{model_.get(), o_.expert_calibration == "all_tokens"};
    // By observer: a point's observers may differ in width (Qwen2-MoE's
    // shared expert's hidden state is wider than a routed expert's).
    std::map<std::string, ChannelRange> observed;
    std::map<std::string, int> wanted;
    for (ActPoint p : points) {
      for (int j : model.ObserversOf(p)) wanted[names[j]] = j;
    }
    if (v_out) wanted[v_name] = v_index;
    ObserveGroupInputs(model, *layer, calib_, o_.batch_size, wanted, [&](const std::string& name, const at::Tensor& x) {
      if (!wanted.count(name)) return;
      if (point_of.count(name)) observed[name].Add(x);
      if (v_out && name == v_name) {
        const Linear& v = layer->linears[v_index];
        v_out->Add(v.bias.defined() ? at::linear(x, v.weight, v.bias) : at::linear(x, v.weight));
      }
    });
    // Per channel where the observers agree in width; the scalar range of
    // the whole point always.
    for (const auto& [name, r] : observed) {
      const int p = static_cast<int>(point_of.at(name));
      const at::Tensor lo = r.min.min(), hi = r.max.max();
      point_lo[p] = point_lo[p].defined() ? at::minimum(point_lo[p], lo) : lo;
      point_hi[p] = point_hi[p].defined() ? at::maximum(point_hi[p], hi) : hi;
      ChannelRange& merged = ranges[p];
      if (!merged.min.defined()) {
        merged = r;
      } else if (merged.min.numel() == r.min.numel()) {
        merged.min = at::minimum(merged.min, r.min);
        merged.max = at::maximum(merged.max, r.max);
      } else {
        mixed_widths[p] = true;
      }
    }
    for (int p = 0; p < kNumActPoints; ++p) {
      if (mixed_widths[p]) ranges[p] = ChannelRange{};
    }
    return ranges;
  };
  LayerActQuant act;
  std::array<bool, kNumActPoints> set_by_transform{};
  for (const RecipeStep& step : transforms_) {
    if (step.method == "smoothquant") {
      auto ranges = collect(nullptr, {ActPoint::kAttnIn, ActPoint::kMlpIn});
      nlohmann::json j = nlohmann::json::object();
      for (ActPoint p : {ActPoint::kAttnIn, ActPoint::kMlpIn}) {
        const ChannelRange& r = ranges[static_cast<int>(p)];
        auto scales = SmoothLayer(model, p, at::maximum(r.min.abs(), r.max.abs()), SmoothQuantOptionsOf(step), layer);
        if (!scales.ok()) return scales.status();
        j[ActPointName(p)] = {{"scale_min", scales->min().item<double>()},
                              {"scale_max", scales->max().item<double>()}};
      }
      (*details)["smoothquant"] = j;
    } else if (step.method == "rptq") {
      RptqStats stats;
      auto ranges = collect(&stats.v_out, kAllActPoints);
      stats.attn_in = ranges[0];
      stats.attn_out = ranges[1];
      stats.mlp_in = ranges[2];
      stats.mlp_hidden = ranges[3];
      RptqOptions options = RptqOptionsOf(step);
      options.seed = o_.seed;
      nlohmann::json j;
      QAAS_RETURN_IF_ERROR(ApplyRptq(model, stats, options, o_.scheme.activations, layer, &act, &j));
      set_by_transform.fill(true);
      (*details)["rptq"] = j;
    }
  }
  const TensorQuant& a = o_.scheme.activations;
  if (a.enabled()) {
    if (a.is_static_int()) {
      auto ranges = collect(nullptr, kAllActPoints);
      nlohmann::json j = nlohmann::json::object();
      for (int p = 0; p < kNumActPoints; ++p) {
        if (set_by_transform[p]) continue;
        const double lo = point_lo[p].item<double>(), hi = point_hi[p].item<double>();
        act.inputs[p] = StaticPerTensorQuantizer(a, lo, hi);
        j[ActPointName(static_cast<ActPoint>(p))] = {lo, hi};
      }
      (*details)["static_activation_ranges"] = j;
    } else {
      for (int p = 0; p < kNumActPoints; ++p) {
        if (!set_by_transform[p]) act.inputs[p] = DynamicQuantizer(a);
      }
    }
  }
  act.kv = DynamicQuantizer(o_.scheme.kv_cache);
  if (a.enabled() || act.kv.enabled()) layer->act = std::make_shared<const LayerActQuant>(act.To(device_));
  return absl::OkStatus();
}

// One layer, as the GPTQ paper's sequential driver runs it: the layer sees
// the quantized model's stream, is transformed, (learned,) quantized linear
// by linear, and its quantized outputs become the next layer's inputs.
absl::Status Pipeline::QuantizeLayer(int i) {
  // The layer's resume record keeps what this layer adds to the report.
  const size_t layers_before = report_.layers.size(), blocks_before = report_.blocks.size();
  const double calibration_before = report_.seconds_calibration,
               quantization_before = report_.seconds_quantization, evaluation_before = report_.seconds_evaluation;
  Progress(i, "loading");
  const DecoderModel& model = *model_;
  const std::string layer_prefix = model.LayerPrefix(i);
  QAAS_ASSIGN_OR_RETURN(const DecoderLayer loaded, model.LoadLayer(i));
  QAAS_RETURN_IF_ERROR(CheckLayerFinite(loaded, layer_prefix, model.LinearNames()));
  const DecoderLayer original = loaded.To(device_);

  auto t0 = Clock::now();
  for (auto& s : evals_) s.original = ForwardBatched(model, original, s.original, o_.batch_size);
  QAAS_RETURN_IF_ERROR(ForwardTasks(&original, nullptr, layer_prefix));
  report_.seconds_evaluation += Elapsed(t0);

  // The recipe's transforms give a float layer computing the same function
  // (up to rounding), with the activation quantizers the scheme asks for.
  DecoderLayer transformed = original;
  nlohmann::json transforms = nlohmann::json::object();
  if (!transforms_.empty() || !o_.scheme.weight_only()) {
    Progress(i, "transforming");
    auto tc = Clock::now();
    QAAS_RETURN_IF_ERROR(TransformLayer(&transformed, &transforms));
    report_.seconds_calibration += Elapsed(tc);
  }

  // A quantizer that learns the block (OmniQuant: clipping, and with
  // quantized activations equivalent transforms folded into `transformed`)
  // does so against the float block's output on the float model's stream.
  if (quantizer_->LearnsBlock()) {
    Progress(i, "training");
    auto tc = Clock::now();
    at::Tensor targets = ForwardBatched(model, original, calib_fp_, o_.batch_size);
    nlohmann::json learned;
    QAAS_RETURN_IF_ERROR(Annotate(
        quantizer_->LearnBlock(model, calib_, targets,
                               [&](int epoch, int epochs, double loss) {
                                 if (o_.on_progress) {
                                   o_.on_progress({i, config_.num_layers, "training", epoch, epochs, loss});
                                 }
                                 // Training a layer can take long: honour a stop between epochs.
                                 return !(o_.should_stop && o_.should_stop());
                               },
                               &transformed, &learned),
        layer_prefix));
    transforms[quantizer_->name()] = std::move(learned);
    calib_fp_ = targets;
    report_.seconds_quantization += Elapsed(tc);
  }

  Progress(i, "quantizing");
  DecoderLayer quantized = transformed;
  QuantizedLinears q;
  if (o_.scheme.weights.enabled()) {
    QAAS_ASSIGN_OR_RETURN(q, QuantizeLinears(i, original, transformed, &quantized));
  } else {  // float weights: every linear as it is
    q.linears.resize(model.LinearNames().size());
    for (const std::string& name : model.LinearNames()) q.reports.push_back({layer_prefix + name, "none"});
  }
  for (LayerReport& r : q.reports) report_.layers.push_back(std::move(r));

  // Calibration stream: the next layer sees the quantized layer's outputs.
  if (calib_.defined()) {
    Progress(i, "calibrating");
    auto tc = Clock::now();
    at::Tensor next = q.calib_out.defined() ? q.calib_out : ForwardBatched(model, quantized, calib_, o_.batch_size);
    // The block's error, a diagnostic: on the first windows only, so it
    // costs a fraction of a forward, not a whole one.
    const int64_t k = std::min<int64_t>(calib_.size(0), kBlockErrorWindows);
    at::Tensor ref = ForwardBatched(model, original, calib_.narrow(0, 0, k), o_.batch_size);
    report_.blocks.push_back(
        {i, RelativeError(ref, next.narrow(0, 0, k)), transforms.empty() ? nlohmann::json() : transforms});
    calib_ = next;
    report_.seconds_calibration += Elapsed(tc);
    QAAS_RETURN_IF_ERROR(CheckFinite(calib_, absl::StatusCode::kFailedPrecondition,
                                     absl::StrCat(layer_prefix, " quantized: its output on the calibration data")));
  }

  Progress(i, "evaluating");
  t0 = Clock::now();
  for (auto& s : evals_) {
    s.quantized = ForwardBatched(model, quantized, s.quantized, o_.batch_size);
    QAAS_RETURN_IF_ERROR(CheckFinite(s.quantized, absl::StatusCode::kFailedPrecondition,
                                     absl::StrCat(layer_prefix, " quantized: its output on ", s.ref.name)));
  }
  QAAS_RETURN_IF_ERROR(ForwardTasks(nullptr, &quantized, layer_prefix));
  report_.seconds_evaluation += Elapsed(t0);

  // What a resumed run restores instead of redoing this layer.
  LayerRecord record;
  record.fingerprint = fingerprint_;
  record.layer = i;
  record.linears.assign(report_.layers.begin() + layers_before, report_.layers.end());
  record.blocks.assign(report_.blocks.begin() + blocks_before, report_.blocks.end());
  record.seconds_calibration = report_.seconds_calibration - calibration_before;
  record.seconds_quantization = report_.seconds_quantization - quantization_before;
  record.seconds_evaluation = report_.seconds_evaluation - evaluation_before;
  const LayerToPack pack{layer_prefix, &model.LinearNames(), &transformed, &quantized, &q.linears, ck_.get()};
  return SaveLayer(i, pack, record);
}

int64_t Pipeline::StagedBatches() const {
  if (o_.staged_forward_bytes == 0 || !o_.scheme.weights.enabled() || !quantizer_->NeedsHessians() ||
      !quantizer_->Sequential() || quantizer_->SampleWindows() > 0 || config_.moe.num_experts > 0 ||
      !calib_.defined() || calib_.size(0) == 0) {
    return 0;
  }
  const int64_t batches = (calib_.size(0) + o_.batch_size - 1) / o_.batch_size;
  // A batch holds batch_size windows, or all of them when there are fewer
  // (one 2048-token window at LLaMA-7B width is 0.3 GB; eight would not fit
  // the default budget, and every group would be recomputed).
  const int64_t batch_windows = std::min<int64_t>(o_.batch_size, calib_.size(0));
  const uint64_t per_batch =
      std::max<uint64_t>(1, static_cast<uint64_t>(StagedBytesPerToken(config_) * batch_windows * calib_.size(1)));
  return std::min<int64_t>(batches, static_cast<int64_t>(o_.staged_forward_bytes / per_batch));
}

absl::StatusOr<QuantizedLinears> Pipeline::QuantizeLinears(int i, const DecoderLayer& original,
                                                           const DecoderLayer& transformed,
                                                           DecoderLayer* quantized) {
  const DecoderModel& model = *model_;
  const std::vector<std::string>& names = model.LinearNames();
  const std::string layer_prefix = model.LayerPrefix(i);
  QuantizedLinears out;
  out.linears.resize(names.size());
  out.reports.resize(names.size());
  LayerToQuantize layer{&model, &original, quantized, at::Tensor()};
  if (const int n = quantizer_->SampleWindows(); n > 0) {
    layer.sample = calib_.narrow(0, 0, std::min<int64_t>(n, calib_.size(0)));
  }
  // GPTQ's "true sequential": group by group, each group's inputs gathered
  // with the groups before it already quantized and the activations quantized
  // as the layer will see them. Without it, one group of every linear.
  std::vector<LinearGroup> groups = model.SequentialGroups();
  if (!quantizer_->Sequential()) {
    groups = {{"all", std::vector<int>(names.size())}};
    for (size_t j = 0; j < names.size(); ++j) groups[0].linears[j] = static_cast<int>(j);
  }
  // Each calibration batch's forward runs once for all the groups: it pauses
  // when it has handed a group its inputs, and applies that group's linears
  // once they are quantized (as many batches as staged_forward_bytes holds;
  // the rest are recomputed up to each group). Not for a routed expert's
  // inputs (a forward of that expert only), sampled windows (a forward of
  // their own) or a quantizer that gathers every linear at once.
  std::unique_ptr<StagedLayerForward> staged;
  if (const int64_t k = StagedBatches(); k > 0) {
    // The forwards hold these tensors from their start: each linear's
    // quantized weight is copied into them (contiguous, as the recomputing
    // path stores it) before any forward reaches it.
    for (Linear& lin : quantized->linears) {
      lin.weight = lin.weight.clone(at::MemoryFormat::Contiguous);
      if (lin.bias.defined()) lin.bias = lin.bias.clone(at::MemoryFormat::Contiguous);
    }
    staged = std::make_unique<StagedLayerForward>(model, quantized, calib_, o_.batch_size, k, groups);
  }
  // The windows the staged forwards do not hold.
  const int64_t staged_windows = staged ? staged->windows() : 0;
  const at::Tensor recomputed = calib_.defined() ? calib_.narrow(0, staged_windows, calib_.size(0) - staged_windows)
                                                 : calib_;
  int expert_reported = -1;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& [group_name, group, expert] = groups[g];
    if (expert >= 0 && expert != expert_reported) {
      // A mixture of experts' layer can take long: a stop is honoured
      // between experts too (the layer reruns whole on resume).
      if (o_.should_stop && o_.should_stop()) {
        return absl::CancelledError(absl::StrCat("cancelled at layer ", i, " of ", config_.num_layers, ", expert ",
                                                 expert + 1, " of ", config_.moe.num_experts));
      }
      if (o_.on_progress) {
        PipelineProgress progress{i, config_.num_layers, "quantizing"};
        progress.expert = expert + 1;
        progress.num_experts = config_.moe.num_experts;
        o_.on_progress(progress);
      }
      expert_reported = expert;
    }
    std::map<std::string, int> in_group;
    for (int j : group) in_group[names[j]] = j;
    std::vector<LinearToQuantize> linears(names.size());
    std::map<int, std::unique_ptr<HessianAccumulator>> hessians;
    std::map<int, int> shared_with;  // a linear -> the one whose accumulator holds its inputs
    if (quantizer_->NeedsHessians() || layer.sample.defined()) {
      auto tc = Clock::now();
      // A routed expert's group: its inputs need the router and that expert
      // only (the forwards' outputs are discarded).
      model_->set_observed_expert(expert);
      struct Reset {
        DecoderModel* model;
        ~Reset() { model->set_observed_expert(-1); }
      } reset{model_.get()};
      if (quantizer_->NeedsHessians()) {
        // Linears that read the same tensor (q/k/v, gate/up: the forward
        // hands it to each in turn) share one accumulator.
        at::Tensor last_x;
        int last_j = -1;
        const LinearInputHook observe = [&](const std::string& name, const at::Tensor& x) {
          auto it = in_group.find(name);
          if (it == in_group.end()) return;
          const int j = it->second;
          if (last_j >= 0 && x.is_same(last_x)) {
            shared_with.emplace(j, shared_with.count(last_j) ? shared_with[last_j] : last_j);
          } else {
            auto& h = hessians[j];
            if (!h) h = std::make_unique<HessianAccumulator>(original.linears[j].weight.size(1), device_);
            h->Add(x);
          }
          last_x = x;
          last_j = j;
        };
        // The staged batches first: the windows in their order, as the
        // recomputing path sees them.
        if (staged) staged->Advance(static_cast<int>(g), observe);
        ObserveGroupInputs(model, *quantized, recomputed, o_.batch_size, in_group, observe);
        // A linear that saw no token (an expert nothing was routed to) has
        // an empty accumulator: it falls back below.
        for (int j : group) {
          if (!shared_with.count(j) && !hessians.count(j)) {
            hessians[j] = std::make_unique<HessianAccumulator>(original.linears[j].weight.size(1), device_);
          }
        }
        for (const auto& [j, root] : shared_with) {
          if (hessians.count(j)) {
            return absl::InternalError(absl::StrCat(layer_prefix, names[j], ": its inputs were the same tensor as ",
                                                    names[root], "'s in some forwards and not in others"));
          }
        }
      }
      if (layer.sample.defined()) {
        ObserveGroupInputs(model, *quantized, layer.sample, o_.batch_size, in_group, [&](const std::string& name, const at::Tensor& x) {
          auto it = in_group.find(name);
          if (it == in_group.end()) return;
          at::Tensor& inputs = linears[it->second].sample_inputs;
          inputs = inputs.defined() ? at::cat({inputs, x}) : x;
        });
      }
      report_.seconds_calibration += Elapsed(tc);
    }
    for (int j : group) {
      LinearToQuantize& linear = linears[j];
      linear.index = j;
      linear.weight = transformed.linears[j].weight;
      const int holder = shared_with.count(j) ? shared_with[j] : j;
      if (hessians.count(holder)) linear.hessian = hessians[holder]->H();
      LayerReport& report = out.reports[j];
      report.name = layer_prefix + names[j];
      report.method = quantizer_->name();
      report.group = group_name;
      // The tokens its statistics come from: all of them for a dense linear,
      // the routed ones for an expert. Too few: RTN, and the report says so.
      WeightQuantizer* quantizer = quantizer_.get();
      if (hessians.count(holder) || layer.sample.defined()) {
        report.calibration_tokens = hessians.count(holder)            ? hessians[holder]->samples()
                                    : linear.sample_inputs.defined() ? linear.sample_inputs.size(0)
                                                                     : 0;
        if (report.calibration_tokens < o_.min_calibration_tokens) {
          quantizer = fallback_.get();
          report.method = fallback_->name();
          report.details = {{"fallback",
                             absl::StrCat(quantizer_->name(), " needs calibration tokens; this linear saw ",
                                          report.calibration_tokens, " (fewer than min_calibration_tokens ",
                                          o_.min_calibration_tokens, ")")}};
        }
      }
      auto tq = Clock::now();
      nlohmann::json fallback_details;
      auto q = quantizer->Quantize(layer, linear, quantizer == fallback_.get() ? &fallback_details : &report.details);
      if (!q.ok()) return Annotate(q.status(), report.name);
      QAAS_RETURN_IF_ERROR(CheckFinite(q->dequantized, absl::StatusCode::kFailedPrecondition,
                                       absl::StrCat(report.name, ": the quantized weight")));
      report.seconds = Elapsed(tq);
      report.relative_weight_error = RelativeError(linear.weight, q->dequantized);
      // Contiguous: a resumed run replays this layer from a stored copy, and
      // the same memory layout gives the same matmul, bit for bit.
      Linear& lin = quantized->linears[j];
      // Evaluate the bias as the artifact stores it.
      const at::Tensor bias = layouts_.front()->StoredBias(*q, lin.bias);
      if (staged) {  // into the tensors the paused forwards hold
        if (!lin.weight.sizes().equals(q->dequantized.sizes()) ||
            lin.weight.scalar_type() != q->dequantized.scalar_type() || bias.defined() != lin.bias.defined()) {
          return absl::InternalError(absl::StrCat(report.name, ": the quantized weight or bias differs in shape or type "
                                                  "from the float one"));
        }
        lin.weight.copy_(q->dequantized);
        if (bias.defined() && !bias.is_same(lin.bias)) lin.bias.copy_(bias);
      } else {
        lin.weight = q->dequantized.contiguous();
        lin.bias = bias;
      }
      report_.seconds_quantization += report.seconds;
      out.linears[j] = *std::move(q);
    }
  }
  if (staged) {  // the staged batches run to their ends: the next layer's inputs
    auto tc = Clock::now();
    const at::Tensor head = staged->Finish();
    out.calib_out = recomputed.size(0) == 0
                        ? head
                        : at::cat({head, ForwardBatched(model, *quantized, recomputed, o_.batch_size)}, 0);
    report_.seconds_calibration += Elapsed(tc);
  }
  return out;
}

absl::Status Pipeline::SaveLayer(int i, const LayerToPack& layer, const LayerRecord& record) {
  std::vector<std::string> files;
  for (const auto& layout : layouts_) {
    // Each layout packs the layer in the checkpoint's form (Gemma's stored
    // norms, Phi-3's fused projections).
    QAAS_ASSIGN_OR_RETURN(const CheckpointFormLayer stored,
                          ToCheckpointForm(*model_, layer, layout->PacksQuantized()));
    QAAS_ASSIGN_OR_RETURN(std::vector<RawTensor> packed, layout->PackLayer(stored.View(layer.prefix, layer.checkpoint)));
    files.push_back(CheckpointFile(layout->checkpoint_stem(), i));
    QAAS_RETURN_IF_ERROR(WriteSafetensors(OutputPath(files.back()), packed));
  }
  files.push_back(CheckpointFile("state", i));  // last: marks the layer complete
  QAAS_RETURN_IF_ERROR(WriteLayerState(OutputPath(files.back()), *layer.quantized, ToJson(record)));
  return o_.on_layer_saved ? o_.on_layer_saved(i, files) : absl::OkStatus();
}

absl::Status Pipeline::ReplayLayer(int i) {
  Progress(i, "restoring");
  const DecoderModel& model = *model_;
  const std::string state_path = OutputPath(CheckpointFile("state", i));
  QAAS_ASSIGN_OR_RETURN(const LayerState state, ReadLayerState(state_path));
  auto record = LayerRecordFromJson(state.info);
  if (!record.ok()) return Annotate(record.status(), state_path);
  QAAS_ASSIGN_OR_RETURN(const DecoderLayer loaded, model.LoadLayer(i));
  const DecoderLayer original = loaded.To(device_);
  const DecoderLayer quantized = state.layer.To(device_);
  // The streams the layer's quantization advanced, through the same forwards.
  for (auto& s : evals_) s.original = ForwardBatched(model, original, s.original, o_.batch_size);
  if (calib_fp_.defined()) calib_fp_ = ForwardBatched(model, original, calib_fp_, o_.batch_size);
  if (calib_.defined()) calib_ = ForwardBatched(model, quantized, calib_, o_.batch_size);
  for (auto& s : evals_) s.quantized = ForwardBatched(model, quantized, s.quantized, o_.batch_size);
  QAAS_RETURN_IF_ERROR(ForwardTasks(&original, &quantized, model.LayerPrefix(i)));
  for (LayerReport& l : record->linears) report_.layers.push_back(std::move(l));
  for (BlockReport& b : record->blocks) report_.blocks.push_back(std::move(b));
  report_.seconds_calibration += record->seconds_calibration;
  report_.seconds_quantization += record->seconds_quantization;
  report_.seconds_evaluation += record->seconds_evaluation;
  return absl::OkStatus();
}

absl::Status Pipeline::PrepareTasks(int* max_len) {
  if (o_.tasks.empty()) return absl::OkStatus();
  if (o_.task_max_length < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tasks max_length must be positive, got ", o_.task_max_length));
  }
  const int context = config_.max_position_embeddings;
  const int64_t max_length = o_.task_max_length > 0 ? o_.task_max_length : context;
  if (max_length > context && config_.architecture == "opt") {
    return absl::InvalidArgumentError(absl::StrCat("tasks max_length ", max_length, " exceeds ", config_.model_type,
                                                   "'s ", context, " learned positions"));
  }
  if (o_.task_limit < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tasks limit must be 0 (all) or positive, got ", o_.task_limit));
  }
  std::vector<TaskInput> inputs;
  nlohmann::json fingerprint = {{"limit", o_.task_limit}, {"max_length", max_length}};
  for (const TaskRef& ref : o_.tasks) {
    const TaskInfo* task = FindTask(ref.task);
    if (!task) {
      return absl::InvalidArgumentError(UnknownTaskMessage(ref.task));
    }
    const std::string& display = ref.name.empty() ? ref.path : ref.name;
    std::string raw;
    QAAS_ASSIGN_OR_RETURN(auto docs, LoadTaskDocs(*task, ref.path, display, o_.task_limit, &raw));
    fingerprint["files"].push_back({task->name, Fnv1a(raw)});
    inputs.push_back(EncodeTask(*task, display, std::move(docs), *tokenizer_));
  }
  fingerprint_["tasks"] = std::move(fingerprint);
  // Batches of about what the evaluation windows' batches hold.
  const int64_t budget = static_cast<int64_t>(std::max(1, o_.batch_size)) * std::min<int64_t>(max_length, 2048);
  QAAS_ASSIGN_OR_RETURN(TaskEvaluator ev, TaskEvaluator::Create(std::move(inputs), max_length, budget, device_));
  tasks_.emplace(std::move(ev));
  *max_len = std::max<int>(*max_len, static_cast<int>(max_length));
  return absl::OkStatus();
}

absl::Status Pipeline::ForwardTasks(const DecoderLayer* original, const DecoderLayer* quantized,
                                    const std::string& prefix) {
  if (!tasks_) return absl::OkStatus();
  const auto t0 = Clock::now();
  if (original) tasks_->Forward(*model_, *original, &task_original_);
  if (quantized) {
    tasks_->Forward(*model_, *quantized, &task_quantized_);
    // One device round trip for all batches.
    at::Tensor bad = at::zeros({}, at::TensorOptions().dtype(at::kLong).device(device_));
    int64_t values = 0;
    for (const at::Tensor& h : task_quantized_) {
      bad += at::logical_not(at::isfinite(h)).sum();
      values += h.numel();
    }
    if (const int64_t n = bad.item<int64_t>(); n > 0) {
      return absl::FailedPreconditionError(absl::StrCat(prefix, " quantized: its output on the tasks has ", n,
                                                        " non-finite values (NaN or Inf) of ", values));
    }
  }
  task_seconds_ += Elapsed(t0);
  return absl::OkStatus();
}

absl::Status Pipeline::ScoreTasks() {
  if (!tasks_) return absl::OkStatus();
  const auto t0 = Clock::now();
  auto original = tasks_->Score(*model_, task_original_);
  if (!original.ok()) return Annotate(original.status(), "the original model");
  auto quantized = tasks_->Score(*model_, task_quantized_);
  if (!quantized.ok()) return Annotate(quantized.status(), "the quantized model");
  TasksReport out;
  out.max_length = tasks_->max_length();
  out.limit = o_.task_limit;
  for (size_t t = 0; t < tasks_->inputs().size(); ++t) {
    const TaskInput& in = tasks_->inputs()[t];
    const TaskPackStats& st = tasks_->stats()[t];
    const TaskScores a = ScoreTask(*in.task, in.docs, (*original)[t], o_.task_bootstrap_iters);
    const TaskScores b = ScoreTask(*in.task, in.docs, (*quantized)[t], o_.task_bootstrap_iters);
    TaskReport r;
    r.task = in.task->name;
    r.data = in.name;
    r.docs = a.docs;
    r.requests = st.requests;
    r.truncated_requests = st.truncated;
    r.truncated_docs = st.truncated_docs;
    r.tokens = st.tokens;
    for (size_t d = 0; d < a.correct.size(); ++d) r.changed_docs += a.correct[d] != b.correct[d];
    auto add = [&r](const char* metric, const std::optional<MetricValue>& x, const std::optional<MetricValue>& y) {
      if (x && y) r.metrics.push_back({metric, x->value, x->stderr_, y->value, y->stderr_});
    };
    if (a.perplexity) add("perplexity", a.perplexity, b.perplexity);
    add("acc", a.acc, b.acc);
    add("acc_norm", a.acc_norm, b.acc_norm);
    out.tokens += 2 * st.tokens;
    out.tasks.push_back(std::move(r));
  }
  task_seconds_ += Elapsed(t0);
  out.seconds = task_seconds_;
  out.tokens_per_second = task_seconds_ > 0 ? out.tokens / task_seconds_ : 0;
  report_.tasks = std::move(out);
  return absl::OkStatus();
}

absl::Status Pipeline::Assemble() {
  Progress(config_.num_layers, "exporting");
  ArtifactSummary summary;
  summary.scheme = o_.scheme;
  summary.weight_step = weight_step_;
  summary.head_dim = config_.head_dim;
  if (config_.moe.num_experts > 0) {
    // The routers and Qwen2-MoE's shared-expert gate stay float.
    summary.float_modules = {"re:.*\\.gate$", "re:.*shared_expert_gate$"};
  }
  summary.reordered = std::any_of(transforms_.begin(), transforms_.end(),
                                  [](const RecipeStep& s) { return s.method == "rptq"; });
  if (config_.moe.num_experts > 0 && o_.scheme.weights.enabled()) {
    // Optimum's GPTQ loader would otherwise turn every nn.Linear of a block
    // into a quantized one, Qwen2-MoE's float shared-expert gate included.
    // It matches a module when its name ends with a listed one. Transformers
    // 5 names Mixtral's experts mlp.experts.J.{gate,up,down}_proj (the
    // checkpoint keeps block_sparse_moe.experts.J.{w1,w3,w2}), so Mixtral's
    // experts are listed under both names.
    static const std::map<std::string, std::string> kMixtralV5 = {
        {"w1", "gate_proj"}, {"w3", "up_proj"}, {"w2", "down_proj"}};
    const std::string mixtral_prefix = config_.moe.block + ".experts.";
    for (const LinearGroup& g : model_->SequentialGroups()) {
      std::vector<std::string> names;
      for (int j : g.linears) names.push_back(model_->LinearNames()[j]);
      if (config_.moe.mixtral_names) {
        const size_t n = names.size();
        for (size_t k = 0; k < n; ++k) {
          if (!absl::StartsWith(names[k], mixtral_prefix)) continue;
          const std::vector<std::string> parts = absl::StrSplit(names[k].substr(mixtral_prefix.size()), '.');
          const auto alias = parts.size() == 2 ? kMixtralV5.find(parts[1]) : kMixtralV5.end();
          if (alias != kMixtralV5.end()) names.push_back(absl::StrCat("mlp.experts.", parts[0], ".", alias->second));
        }
      }
      summary.modules_in_block.push_back(std::move(names));
    }
  }
  for (const auto& l : report_.layers) {
    if (l.details.is_object() && l.details.value("axis", "") == "per_ic") {
      summary.per_input_channel_layers.push_back(l.name);
    }
  }
  for (size_t k = 0; k < layouts_.size(); ++k) {
    nlohmann::json manifest;  // the job's artifact has one; a plain copy does not
    if (k == 0) {
      manifest = o_.manifest_extra.is_null() ? nlohmann::json::object() : o_.manifest_extra;
      manifest["scheme"] = o_.scheme.ToString();
      manifest["recipe"] = RecipeNames();
      manifest["seed"] = o_.seed;
    }
    QAAS_ASSIGN_OR_RETURN(const uint64_t bytes,
                          WriteArtifact(*layouts_[k], *ck_, model_->HeadTensorNames(), config_.num_layers,
                                        o_.model_dir, o_.output_dir, summary, std::move(manifest),
                                        o_.max_shard_bytes));
    if (k == 0) {
      report_.quantized_bytes = bytes;
      report_.artifact_format = layouts_[k]->name();
    }
  }
  return absl::OkStatus();
}

namespace {
// Whether the model's linears are stored in bfloat16 (its first layer's).
bool ModelIsBFloat16(const Checkpoint& ck, const DecoderModel& model) {
  auto entry = ck.Entry("model.layers.0." + model.LinearNames().front() + ".weight");
  if (!entry.ok() && !model.Fusions().empty()) entry = ck.Entry("model.layers.0." + model.Fusions().front().name + ".weight");
  return entry.ok() && entry->dtype == DType::kBF16;
}
}  // namespace

absl::StatusOr<Report> Pipeline::Run() {
  // No autograd graphs, except where OmniQuant trains (it turns them on).
  c10::NoGradGuard no_grad;
  QAAS_RETURN_IF_ERROR(Prepare());
  // compressed-tensors stores scales in the model dtype; a bfloat16 model's
  // are rounded to bfloat16, so the artifact is what is evaluated.
  const bool bf16_scales = layouts_.front()->name() == "compressed-tensors" && ModelIsBFloat16(*ck_, *model_);
  ScaleDTypeScope scale_dtype(bf16_scales ? at::kBFloat16 : at::kHalf);
  report_.scheme = o_.scheme.ToString();
  report_.recipe = RecipeNames();
  report_.model = o_.model_dir;
  report_.num_layers = config_.num_layers;
  report_.original_bytes = ck_->total_bytes();
  report_.device = device_.str();
  const ComputeEnvironment& env = DescribeComputeEnvironment();
  report_.torch_version = env.torch_version;
  report_.cpu_capability = env.cpu_capability;
  report_.blas = env.blas;
  if (o_.resume) {
    std::vector<std::string> stems;
    for (const auto& layout : layouts_) stems.push_back(layout->checkpoint_stem());
    report_.resumed_layers = ResumableLayers(o_.output_dir, config_.num_layers, stems, fingerprint_);
  }
  for (int i = 0; i < config_.num_layers; ++i) {
    if (o_.should_stop && o_.should_stop()) {
      return absl::CancelledError(absl::StrCat("cancelled at layer ", i, " of ", config_.num_layers));
    }
    QAAS_RETURN_IF_ERROR(i < report_.resumed_layers ? ReplayLayer(i) : QuantizeLayer(i));
    Progress(i + 1, i < report_.resumed_layers ? "layer restored" : "layer done");
  }
  if (!evals_.empty() || tasks_) Progress(config_.num_layers, "evaluating");
  auto t0 = Clock::now();
  for (auto& s : evals_) {
    auto logits = [this](const at::Tensor& hidden) { return model_->Logits(hidden); };
    NllSum orig = WindowsNll(s.original, s.windows, logits);
    NllSum quant = WindowsNll(s.quantized, s.windows, logits);
    for (const auto& [model, ppl] : {std::pair<const char*, double>{"original", orig.perplexity()},
                                     std::pair<const char*, double>{"quantized", quant.perplexity()}}) {
      if (!std::isfinite(ppl)) {
        return absl::FailedPreconditionError(
            absl::StrCat(s.ref.name, ": the ", model, " model's perplexity is ", ppl,
                         " (its head or the final hidden states are not finite)"));
      }
    }
    report_.evaluations.push_back({s.ref.name, s.ref.seq_len, s.windows.size(0), orig.tokens,
                                   orig.perplexity(), quant.perplexity()});
  }
  QAAS_RETURN_IF_ERROR(ScoreTasks());
  report_.seconds_evaluation += Elapsed(t0);
  QAAS_RETURN_IF_ERROR(Assemble());
  report_.seconds_total = Elapsed(start_);
  const PeakMemory peak = ReadPeakMemory(device_);
  report_.peak_host_memory_bytes = peak.host_bytes;
  report_.peak_device_allocated_bytes = peak.device_allocated_bytes;
  report_.peak_device_reserved_bytes = peak.device_reserved_bytes;
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(o_.output_dir + "/report.json", ToJson(report_).dump(2) + "\n"));
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(o_.output_dir + "/report.md", ToMarkdown(report_)));
  return report_;
}

}  // namespace

absl::StatusOr<Report> RunPipeline(const PipelineOptions& options) {
  // libtorch reports errors by exception: they stop here, at the quant boundary.
  try {
    Pipeline p(options);
    return p.Run();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("libtorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("quantization failed: ", e.what()));
  }
}

}  // namespace qaas::quant
