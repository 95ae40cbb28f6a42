#include "quant/pipeline.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quant/data/text_dataset.h"
#include "quant/eval/perplexity.h"
#include "quant/export.h"
#include "quant/formats/act_quant.h"
#include "quant/formats/number_format.h"
#include "quant/layer_state.h"
#include "quant/methods/adadim.h"
#include "quant/methods/gptq.h"
#include "quant/methods/rtn.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/tokenizer.h"
#include "quant/recipe_rules.h"
#include "quant/report.h"
#include "quant/util/device.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

namespace {

// A tensor kind's quantization as config.json records it.
nlohmann::json SpecJson(const TensorQuant& q) {
  nlohmann::json j = {{"format", NumberFormatName(q.format)}, {"bits", q.bits},
                      {"granularity", GranularityName(q.granularity)}, {"symmetric", q.symmetric}};
  if (auto element = ElementFormatOf(q); element.ok()) j["element"] = Traits(*element).name;
  if (q.is_mx()) j["block_size"] = kMxBlockSize;
  return j;
}

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

int ResolveSeqLen(int requested, int context, const std::string& what, absl::Status* error) {
  if (requested == 0) return std::min(2048, context);
  if (requested < 0) {
    *error = absl::InvalidArgumentError(absl::StrCat(what, " seq_len must be positive, got ", requested));
  } else if (requested > context) {
    *error = absl::InvalidArgumentError(absl::StrCat(what, " seq_len ", requested,
                                                     " exceeds the model context ", context));
  }
  return requested;
}

class Pipeline {
 public:
  explicit Pipeline(const PipelineOptions& o) : o_(o) {}

  absl::StatusOr<nlohmann::json> Run();

 private:
  absl::Status Prepare();
  absl::Status CheckRecipeAndScheme();
  // Applies the recipe's transforms to `layer` (a float layer) and sets its
  // activation quantizers; `details` receives what they did.
  absl::Status TransformLayer(DecoderLayer* layer, nlohmann::json* details);
  absl::Status QuantizeLayer(int i);
  // Resume: how many leading layers have checkpoints made from these inputs
  // (later ones are removed), and the replay of one of them.
  int ResumableLayers();
  absl::Status ReplayLayer(int i);
  // Writes checkpoints/state-<i> and hands the layer's files to on_layer_saved.
  absl::Status SaveLayer(int i, const DecoderLayer& quantized, nlohmann::json info);
  std::string CheckpointPath(const char* stem, int i) const {
    return absl::StrFormat("%s/checkpoints/%s-%d.safetensors", o_.output_dir, stem, i);
  }
  absl::Status Assemble();
  // Whether the weight quantizer is GPTQ, alone or under AdaDim.
  bool UsesGptq() const {
    return weight_step_.method == "gptq" || (weight_step_.method == "adadim" && weight_step_.Get("base", "") == "gptq");
  }
  std::vector<std::string> RecipeNames() const {
    std::vector<std::string> names;
    for (const auto& step : transforms_) names.push_back(step.method);
    names.push_back(weight_step_.method);
    return names;
  }
  bool UsesRptq() const {
    return std::any_of(transforms_.begin(), transforms_.end(), [](const RecipeStep& s) { return s.method == "rptq"; });
  }
  void Progress(int layer, const char* step) {
    if (o_.on_progress) o_.on_progress({layer, config_.num_layers, step});
  }
  bool UsesOmniQuant() const { return weight_step_.method == "omniquant"; }
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
  bool any_per_ic_ = false;  // some layer chose AdaDim's per-IC groups
  at::Device device_ = at::kCPU;  // o_.device resolved, by Prepare
  std::unique_ptr<Checkpoint> ck_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<DecoderModel> model_;  // the architecture, with its head on device_
  at::Tensor calib_;  // hidden states of the calibration stream (quantized model)
  at::Tensor calib_fp_;  // OmniQuant: the calibration stream through the float model
  std::vector<EvalStream> evals_;
  Report report_;
  Clock::time_point start_ = Clock::now();
  // What a checkpoint must have been made from to be resumed from.
  nlohmann::json fingerprint_;
};

absl::Status Pipeline::CheckRecipeAndScheme() {
  if (o_.recipe.empty()) return absl::InvalidArgumentError("recipe is empty");
  for (const auto& step : o_.recipe) {
    if (!FindMethod(step.method)) {
      return absl::UnimplementedError(absl::StrCat("method '", step.method, "' is not implemented"));
    }
  }
  QAAS_RETURN_IF_ERROR(CheckRecipe(o_.recipe));  // the table's options and bounds, the order
  const Scheme& sc = o_.scheme;
  QAAS_RETURN_IF_ERROR(CheckRecipeFitsScheme(o_.recipe, sc));
  weight_step_ = RecipeStep{"rtn"};
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
  if (sc.weights.enabled() && sc.weights.format != NumberFormat::kInt && !sc.weights.is_mx()) {
    return absl::UnimplementedError(absl::StrCat("scheme ", sc.ToString(), ": weight format ",
                                                 NumberFormatName(sc.weights.format),
                                                 " is not implemented (integer or MX weights)"));
  }
  if (UsesOmniQuant()) QAAS_RETURN_IF_ERROR(CheckOmniQuantOptions(OmniQuantOptionsOf(weight_step_)));
  return absl::OkStatus();
}

absl::Status Pipeline::Prepare() {
  auto device = ResolveDevice(o_.device);
  if (!device.ok()) return device.status();
  device_ = *device;
  ResetPeakMemory(device_);
  QAAS_RETURN_IF_ERROR(CheckRecipeAndScheme());
  auto ck = Checkpoint::Open(o_.model_dir);
  if (!ck.ok()) return ck.status();
  ck_ = *std::move(ck);
  config_ = ck_->config();
  auto tok = Tokenizer::Load(o_.model_dir);
  if (!tok.ok()) return tok.status();
  tokenizer_ = *std::move(tok);
  if (tokenizer_->vocab_size() > config_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", tokenizer_->vocab_size(),
                                                   " pieces but config.json vocab_size is ", config_.vocab_size));
  }

  fingerprint_ = {{"config", Fnv1a(config_.raw_json)}, {"scheme", o_.scheme.ToString()},
                  {"seed", o_.seed}, {"num_samples", o_.num_samples}, {"device", device_.str()},
                  {"batch_size", o_.batch_size}, {"model_bytes", ck_->total_bytes()},
                  {"inputs", o_.inputs_fingerprint}};
  for (const auto& step : o_.recipe) fingerprint_["recipe"].push_back(RecipeStepJson(step));
  for (const auto& name : ck_->TensorNames()) {
    auto e = ck_->Entry(name);
    if (e.ok()) fingerprint_["tensors"].push_back({name, DTypeName(e->dtype), e->shape, e->begin});
  }

  const int context = config_.max_position_embeddings;
  absl::Status seq_error;
  int max_len = 1;
  // Evaluation windows: [BOS] + encode(whole file).
  for (const auto& ref : o_.evaluations) {
    EvalStream s;
    s.ref = ref;
    s.ref.seq_len = ResolveSeqLen(ref.seq_len, context, "evaluation", &seq_error);
    QAAS_RETURN_IF_ERROR(seq_error);
    auto text = LoadDatasetText(ref.path);
    if (!text.ok()) return text.status();
    fingerprint_["evaluations"].push_back({Fnv1a(*text), s.ref.seq_len, ref.max_windows});
    if (tokenizer_->bos_id() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("the tokenizer of ", o_.model_dir,
                                                     " has no BOS token, which evaluation windows start with"));
    }
    std::vector<int> ids = tokenizer_->Encode(*text);
    ids.insert(ids.begin(), tokenizer_->bos_id());
    auto windows = MakeEvaluationWindows(ids, s.ref.seq_len, ref.max_windows);
    if (!windows.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(ref.name, ": ", windows.status().message()));
    }
    s.windows = *windows;
    max_len = std::max(max_len, s.ref.seq_len);
    evals_.push_back(std::move(s));
  }
  at::Tensor calib_windows;
  if (o_.calibration) {
    const int seq_len = ResolveSeqLen(o_.calibration->seq_len, context, "calibration", &seq_error);
    QAAS_RETURN_IF_ERROR(seq_error);
    auto text = LoadDatasetText(o_.calibration->path);
    if (!text.ok()) {
      return absl::Status(text.status().code(), absl::StrCat("calibration: ", text.status().message()));
    }
    fingerprint_["calibration"] = {Fnv1a(*text), seq_len};
    auto windows = SampleCalibrationWindows(tokenizer_->Encode(*text), o_.num_samples, seq_len, o_.seed);
    if (!windows.ok()) return windows.status();
    calib_windows = *windows;
    report_.calibration = {{"dataset", o_.calibration->name}, {"num_samples", o_.num_samples},
                           {"seq_len", seq_len}, {"seed", o_.seed}, {"tokens", windows->numel()}};
    max_len = std::max(max_len, seq_len);
  }
  auto model = DecoderModel::Create(*ck_, device_, max_len);
  if (!model.ok()) return model.status();
  model_ = *std::move(model);
  if (calib_windows.defined()) calib_ = model_->Embed(calib_windows);
  if (UsesOmniQuant()) calib_fp_ = calib_;
  for (auto& s : evals_) {
    s.original = model_->Embed(s.windows);
    s.quantized = s.original;
  }
  return MakeDirs(o_.output_dir + "/checkpoints");
}

absl::Status Pipeline::TransformLayer(DecoderLayer* layer, nlohmann::json* details) {
  const DecoderModel& model = *model_;
  const std::vector<std::string>& names = model.LinearNames();
  // Each activation point is seen through its first consumer's input.
  std::map<std::string, ActPoint> point_of;
  for (int p = 0; p < kNumActPoints; ++p) {
    point_of[names[model.ConsumersOf(static_cast<ActPoint>(p))[0]]] = static_cast<ActPoint>(p);
  }
  // Per-channel ranges of every point (and of V for RPTQ) on the calibration
  // stream through the float `layer`.
  auto collect = [&](ChannelRange* v_out) {
    std::array<ChannelRange, kNumActPoints> ranges;
    const int v_index = model.ProducersOf(ActPoint::kAttnOut)[0];
    const std::string& v_name = names[v_index];
    ForwardBatched(model, *layer, calib_, o_.batch_size, [&](const std::string& name, const at::Tensor& x) {
      auto it = point_of.find(name);
      if (it != point_of.end()) ranges[static_cast<int>(it->second)].Add(x);
      if (v_out && name == v_name) {
        const Linear& v = layer->linears[v_index];
        v_out->Add(v.bias.defined() ? at::linear(x, v.weight, v.bias) : at::linear(x, v.weight));
      }
    });
    return ranges;
  };
  LayerActQuant act;
  std::array<bool, kNumActPoints> set_by_transform{};
  for (const RecipeStep& step : transforms_) {
    if (step.method == "smoothquant") {
      auto ranges = collect(nullptr);
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
      auto ranges = collect(&stats.v_out);
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
      auto ranges = collect(nullptr);
      nlohmann::json j = nlohmann::json::object();
      for (int p = 0; p < kNumActPoints; ++p) {
        if (set_by_transform[p]) continue;
        const double lo = ranges[p].min.min().item<double>(), hi = ranges[p].max.max().item<double>();
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

absl::Status Pipeline::QuantizeLayer(int i) {
  const size_t layers_before = report_.layers.size(), blocks_before = report_.blocks.size();
  const double calibration_before = report_.seconds_calibration, quantization_before = report_.seconds_quantization,
               evaluation_before = report_.seconds_evaluation;
  Progress(i, "loading");
  const DecoderModel& model = *model_;
  const std::vector<std::string>& linear_names = model.LinearNames();
  const std::string layer_prefix = model.LayerPrefix(i);
  auto loaded = model.LoadLayer(i);
  if (!loaded.ok()) return loaded.status();
  DecoderLayer original = loaded->To(device_);

  auto t0 = Clock::now();
  for (auto& s : evals_) s.original = ForwardBatched(model, original, s.original, o_.batch_size);
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

  // OmniQuant learns the block's clipping (and, with quantized activations,
  // its equivalent transforms, folded into `transformed`) against the float
  // block's output on the float model's stream.
  std::vector<QuantizedLinear> omni_linears;
  if (UsesOmniQuant()) {
    Progress(i, "training");
    auto tc = Clock::now();
    at::Tensor targets = ForwardBatched(model, original, calib_fp_, o_.batch_size);
    const OmniQuantOptions omniquant = OmniQuantOptionsOf(weight_step_);
    const int epochs = OmniQuantEpochs(omniquant, o_.scheme.weights);
    auto omni = OmniQuantLayer(model, transformed, calib_, targets, o_.scheme.weights, !o_.scheme.weight_only(),
                               omniquant, [&](int epoch, double loss) {
                                 if (o_.on_progress) {
                                   o_.on_progress({i, config_.num_layers, "training", epoch, epochs, loss});
                                 }
                                 // Training a layer can take long: honour a stop between epochs.
                                 return !(o_.should_stop && o_.should_stop());
                               });
    if (!omni.ok()) {
      return absl::Status(omni.status().code(), absl::StrCat(layer_prefix, ": ", omni.status().message()));
    }
    transformed = omni->folded;
    omni_linears = std::move(omni->linears);
    transforms["omniquant"] = omni->details;
    calib_fp_ = targets;
    report_.seconds_quantization += Elapsed(tc);
  }

  // Quantize the linears: RTN from the (transformed) float weights; GPTQ
  // "true sequential", group by group, each group's Hessians gathered with
  // the groups before it already quantized (as the GPTQ paper's LLaMA runs
  // do) and with the activations quantized as the layer will see them.
  Progress(i, "quantizing");
  DecoderLayer quantized = transformed;
  std::vector<RawTensor> packed;
  for (const auto& [name, t] : transformed.norms) packed.push_back(TensorToRaw(layer_prefix + name, t.cpu()));
  if (transformed.act) {
    for (int p = 0; p < kNumActPoints; ++p) {
      const ActQuantizer& q = transformed.act->inputs[p];
      const std::string stem = absl::StrCat(layer_prefix, "act_quant.", ActPointName(static_cast<ActPoint>(p)));
      if (q.scale.defined()) packed.push_back(TensorToRaw(stem + ".scale", q.scale.cpu()));
      if (q.zero.defined()) packed.push_back(TensorToRaw(stem + ".zero", q.zero.cpu()));
    }
  }
  std::vector<std::optional<QuantizedLinear>> results(linear_names.size());
  std::vector<LayerReport> reports(linear_names.size());
  if (o_.scheme.weights.enabled()) {
    const std::string& method = weight_step_.method;
    const bool adadim = method == "adadim";
    const bool gptq = UsesGptq();
    const bool sequential = gptq || adadim;
    // AdaDim compares candidates on a bounded subset of the calibration windows.
    at::Tensor sel = adadim ? calib_.narrow(0, 0, std::min<int64_t>(16, calib_.size(0))) : at::Tensor();
    std::vector<std::vector<int>> groups = model.SequentialGroups();
    if (!sequential) {  // RTN needs no inputs: one group of every linear
      groups = {std::vector<int>(linear_names.size())};
      for (size_t j = 0; j < linear_names.size(); ++j) groups[0][j] = static_cast<int>(j);
    }
    for (const auto& group : groups) {
      std::map<std::string, std::unique_ptr<HessianAccumulator>> hessians;
      std::map<std::string, at::Tensor> sel_inputs;  // AdaDim: each linear's inputs on `sel`
      if (sequential) {
        auto tc = Clock::now();
        for (int j : group) {
          hessians[linear_names[j]] = std::make_unique<HessianAccumulator>(
              original.linears[j].weight.size(1), device_);
        }
        ForwardBatched(model, quantized, calib_, o_.batch_size, [&](const std::string& name, const at::Tensor& x) {
          auto it = hessians.find(name);
          if (it != hessians.end()) it->second->Add(x);
        });
        if (adadim) {
          ForwardBatched(model, quantized, sel, o_.batch_size, [&](const std::string& name, const at::Tensor& x) {
            if (hessians.count(name)) sel_inputs[name] = sel_inputs.count(name) ? at::cat({sel_inputs[name], x}) : x;
          });
        }
        report_.seconds_calibration += Elapsed(tc);
      }
      for (int j : group) {
        const std::string& name = linear_names[j];
        const at::Tensor& w = transformed.linears[j].weight;
        LayerReport& lr = reports[j];
        lr.name = layer_prefix + name;
        lr.method = adadim ? "adadim-" + weight_step_.Get("base", "rtn") : method;
        auto tq = Clock::now();
        auto quantize = [&](bool per_ic) -> absl::StatusOr<QuantizedLinear> {
          if (method == "omniquant") return omni_linears[j];
          if (!gptq) return per_ic ? QuantizeRtnPerInputChannel(w, o_.scheme.weights) : QuantizeRtn(w, o_.scheme.weights);
          GptqOptions g = GptqOptionsOf(weight_step_);
          g.per_input_channel = per_ic;
          GptqStats stats;
          auto q = QuantizeGptq(w, hessians[name]->H(), o_.scheme.weights, g, &stats);
          if (q.ok() && !per_ic) {
            lr.details = {{"damp", stats.damp}, {"cholesky_retries", stats.cholesky_retries},
                          {"dead_columns", stats.dead_columns}};
          }
          return q;
        };
        auto q = quantize(false);
        if (!q.ok()) return absl::Status(q.status().code(), absl::StrCat(lr.name, ": ", q.status().message()));
        if (adadim) {
          auto ic = quantize(true);
          if (!ic.ok()) return absl::Status(ic.status().code(), absl::StrCat(lr.name, ": ", ic.status().message()));
          // The block whose output decides: attention for q/k/v, the MLP for
          // its input projections, the linear itself for the output
          // projections (AdaDim, section 4).
          std::function<at::Tensor(const DecoderLayer&)> block;
          switch (model.DecidingBlock(j)) {
            case AdaDimBlock::kAttention:
              block = [&](const DecoderLayer& l) { return model.AttentionForward(l, sel); };
              break;
            case AdaDimBlock::kMlp: {
              at::Tensor h = sel + model.AttentionForward(quantized, sel);
              block = [&model, h](const DecoderLayer& l) { return model.MlpForward(l, h); };
              break;
            }
            case AdaDimBlock::kOwnOutput: {
              const at::Tensor x = sel_inputs[name];
              block = [x, j](const DecoderLayer& l) { return at::linear(x, l.linears[j].weight); };
              break;
            }
          }
          const at::Tensor reference = block(original);
          AdaDimChoice choice = ChooseAxis(*q, *ic, reference, [&](const at::Tensor& weight) {
            DecoderLayer candidate = quantized;
            candidate.linears[j].weight = weight;
            return block(candidate);
          });
          if (choice.per_input_channel) q = *std::move(ic);
          lr.details["axis"] = choice.per_input_channel ? "per_ic" : "per_oc";
          lr.details["block_mse_per_oc"] = choice.error_per_oc;
          lr.details["block_mse_per_ic"] = choice.error_per_ic;
        }
        results[j] = *std::move(q);
        lr.seconds = Elapsed(tq);
        lr.relative_weight_error = RelativeError(w, results[j]->dequantized);
        // Contiguous: a resumed run replays this layer from a stored copy, and
        // the same memory layout gives the same matmul, bit for bit.
        quantized.linears[j].weight = results[j]->dequantized.contiguous();
        if (!results[j]->mx && quantized.linears[j].bias.defined()) {
          // The GPTQ layout stores biases in float16: evaluate what is stored
          // (it matters where a method changed them, e.g. OmniQuant's shifts).
          quantized.linears[j].bias = quantized.linears[j].bias.to(at::kHalf).to(at::kFloat);
        }
        report_.seconds_quantization += lr.seconds;
      }
    }
  }
  for (size_t j = 0; j < linear_names.size(); ++j) {
    const std::string name = layer_prefix + linear_names[j];
    const Linear& lin = transformed.linears[j];
    if (results[j] && results[j]->mx) {
      // MX: element codes and E8M0 scales; unpacking gives the evaluated weights back.
      MxPacked mx = PackMx(results[j]->dequantized, results[j]->element);
      if (!at::equal(UnpackMx(mx), results[j]->dequantized.cpu())) {
        return absl::InternalError(absl::StrCat(name, ": MX packing does not reproduce the quantized weights"));
      }
      packed.push_back(TensorToRaw(name + ".mx_codes", mx.codes));
      packed.push_back(TensorToRaw(name + ".mx_scales", mx.scales));
      if (lin.bias.defined()) packed.push_back(TensorToRaw(name + ".bias", lin.bias.cpu()));
    } else if (results[j]) {
      // Per-IC weights are packed as their transpose, under "<name>.ic"; the
      // bias is not transposed and stays "<name>.bias" (float16, as GPTQ's).
      const bool per_ic = results[j]->per_input_channel;
      any_per_ic_ |= per_ic;
      for (auto& t : PackGptqLinear(per_ic ? name + ".ic" : name, *results[j], per_ic ? at::Tensor() : lin.bias)) {
        packed.push_back(std::move(t));
      }
      if (per_ic && lin.bias.defined()) packed.push_back(TensorToRaw(name + ".bias", lin.bias.cpu().to(at::kHalf)));
    } else {
      reports[j].name = name;
      reports[j].method = "none";
      packed.push_back(TensorToRaw(name + ".weight", lin.weight.cpu()));
      if (lin.bias.defined()) packed.push_back(TensorToRaw(name + ".bias", lin.bias.cpu()));
    }
    report_.layers.push_back(reports[j]);
  }
  if (weight_step_.method == "adadim") {
    // AdaDim's per-IC layers have no common runtime format: keep a plain
    // checkpoint of the dequantized layer, in the stored dtype, as well.
    std::vector<RawTensor> plain;
    // In the stored dtype; tensors the checkpoint lacks (RPTQ's reorder
    // indices) as they are.
    auto add = [&](const std::string& name, const at::Tensor& t) -> absl::Status {
      auto entry = ck_->Entry(name);
      plain.push_back(TensorToRaw(name, entry.ok() ? t.cpu().to(ToScalarType(entry->dtype)) : t.cpu()));
      return absl::OkStatus();
    };
    for (const auto& [name, t] : transformed.norms) QAAS_RETURN_IF_ERROR(add(layer_prefix + name, t));
    for (size_t j = 0; j < linear_names.size(); ++j) {
      const std::string name = layer_prefix + linear_names[j];
      QAAS_RETURN_IF_ERROR(add(name + ".weight", quantized.linears[j].weight));
      if (quantized.linears[j].bias.defined()) QAAS_RETURN_IF_ERROR(add(name + ".bias", quantized.linears[j].bias));
    }
    QAAS_RETURN_IF_ERROR(
        WriteSafetensors(absl::StrFormat("%s/checkpoints/dequantized-layer-%d.safetensors", o_.output_dir, i), plain));
  }

  // Calibration stream: the next layer sees the quantized layer's outputs.
  if (calib_.defined()) {
    Progress(i, "calibrating");
    auto tc = Clock::now();
    at::Tensor ref = ForwardBatched(model, original, calib_, o_.batch_size);
    at::Tensor next = ForwardBatched(model, quantized, calib_, o_.batch_size);
    report_.blocks.push_back({i, RelativeError(ref, next), transforms.empty() ? nlohmann::json() : transforms});
    calib_ = next;
    report_.seconds_calibration += Elapsed(tc);
  }

  Progress(i, "evaluating");
  t0 = Clock::now();
  for (auto& s : evals_) s.quantized = ForwardBatched(model, quantized, s.quantized, o_.batch_size);
  report_.seconds_evaluation += Elapsed(t0);
  QAAS_RETURN_IF_ERROR(WriteSafetensors(CheckpointPath("layer", i), packed));

  // What a resumed run restores instead of redoing this layer.
  nlohmann::json info = {{"fingerprint", fingerprint_},
                         {"layer", i},
                         {"any_per_ic", any_per_ic_},
                         {"layers", nlohmann::json::array()},
                         {"blocks", nlohmann::json::array()},
                         {"seconds",
                          {report_.seconds_calibration - calibration_before,
                           report_.seconds_quantization - quantization_before,
                           report_.seconds_evaluation - evaluation_before}}};
  for (size_t k = layers_before; k < report_.layers.size(); ++k) {
    const LayerReport& l = report_.layers[k];
    info["layers"].push_back({l.name, l.method, l.seconds, l.relative_weight_error, l.details});
  }
  for (size_t k = blocks_before; k < report_.blocks.size(); ++k) {
    const BlockReport& b = report_.blocks[k];
    info["blocks"].push_back({b.index, b.output_relative_error, b.transforms});
  }
  return SaveLayer(i, quantized, std::move(info));
}

absl::Status Pipeline::SaveLayer(int i, const DecoderLayer& quantized, nlohmann::json info) {
  QAAS_RETURN_IF_ERROR(WriteLayerState(CheckpointPath("state", i), quantized, info));
  if (!o_.on_layer_saved) return absl::OkStatus();
  std::vector<std::string> files = {absl::StrFormat("checkpoints/layer-%d.safetensors", i)};
  if (weight_step_.method == "adadim") files.push_back(absl::StrFormat("checkpoints/dequantized-layer-%d.safetensors", i));
  files.push_back(absl::StrFormat("checkpoints/state-%d.safetensors", i));  // last: marks the layer complete
  return o_.on_layer_saved(i, files);
}

int Pipeline::ResumableLayers() {
  int n = 0;
  for (; n < config_.num_layers; ++n) {
    if (!FileExists(CheckpointPath("layer", n)) ||
        (weight_step_.method == "adadim" && !FileExists(CheckpointPath("dequantized-layer", n)))) {
      break;
    }
    // The header is enough to decide; ReplayLayer reads the tensors.
    auto info = ReadLayerStateInfo(CheckpointPath("state", n));
    if (!info.ok() || !info->is_object() || info->value("fingerprint", nlohmann::json()) != fingerprint_ ||
        info->value("layer", -1) != n) {
      break;
    }
  }
  // Checkpoints after the first gap are of no use (and must not be mixed in).
  for (int k = n; k < config_.num_layers; ++k) {
    for (const char* stem : {"state", "layer", "dequantized-layer"}) std::remove(CheckpointPath(stem, k).c_str());
  }
  return n;
}

absl::Status Pipeline::ReplayLayer(int i) {
  Progress(i, "restoring");
  const DecoderModel& model = *model_;
  auto state = ReadLayerState(CheckpointPath("state", i));
  if (!state.ok()) return state.status();
  auto loaded = model.LoadLayer(i);
  if (!loaded.ok()) return loaded.status();
  const DecoderLayer original = loaded->To(device_);
  DecoderLayer quantized = state->layer.To(device_);
  // The streams the layer's quantization advanced, through the same forwards.
  for (auto& s : evals_) s.original = ForwardBatched(model, original, s.original, o_.batch_size);
  if (UsesOmniQuant()) calib_fp_ = ForwardBatched(model, original, calib_fp_, o_.batch_size);
  if (calib_.defined()) calib_ = ForwardBatched(model, quantized, calib_, o_.batch_size);
  for (auto& s : evals_) s.quantized = ForwardBatched(model, quantized, s.quantized, o_.batch_size);
  const nlohmann::json& info = state->info;
  any_per_ic_ |= info.at("any_per_ic").get<bool>();
  for (const auto& l : info.at("layers")) {
    report_.layers.push_back({l[0].get<std::string>(), l[1].get<std::string>(), l[2].get<double>(),
                              l[3].get<double>(), l[4]});
  }
  for (const auto& b : info.at("blocks")) report_.blocks.push_back({b[0].get<int>(), b[1].get<double>(), b[2]});
  report_.seconds_calibration += info.at("seconds")[0].get<double>();
  report_.seconds_quantization += info.at("seconds")[1].get<double>();
  report_.seconds_evaluation += info.at("seconds")[2].get<double>();
  return absl::OkStatus();
}

absl::Status Pipeline::Assemble() {
  Progress(config_.num_layers, "exporting");
  const std::string dir = o_.output_dir + "/artifact";
  QAAS_RETURN_IF_ERROR(MakeDirs(dir));
  std::vector<RawTensor> tensors;
  for (const std::string& name : model_->HeadTensorNames()) {
    auto raw = ck_->LoadRaw(name);
    if (!raw.ok()) return raw.status();
    tensors.push_back(*std::move(raw));
  }
  const size_t num_head_tensors = tensors.size();  // embeddings, final norm, lm_head
  // Appends every layer's checkpoint "<output>/checkpoints/<stem>-<i>.safetensors".
  auto append_layers = [&](const char* stem, std::vector<RawTensor>* out) -> absl::Status {
    for (int i = 0; i < config_.num_layers; ++i) {
      auto f = SafetensorsFile::Open(absl::StrFormat("%s/checkpoints/%s-%d.safetensors", o_.output_dir, stem, i));
      if (!f.ok()) return f.status();
      auto layer = (*f)->ReadAll();
      if (!layer.ok()) return layer.status();
      for (auto& t : *layer) out->push_back(std::move(t));
    }
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(append_layers("layer", &tensors));
  uint64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.data.size();
  report_.quantized_bytes = bytes;
  QAAS_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));

  const nlohmann::json original_config = nlohmann::json::parse(config_.raw_json);
  nlohmann::json config = original_config;
  std::string format = "gptq";
  if (o_.scheme.weights.is_mx()) {
    format = "mx";
    config["quantization_config"] = {{"quant_method", "qaas"}, {"format", "mx"},
                                     {"weights", SpecJson(o_.scheme.weights)}};
  } else if (o_.scheme.weights.enabled()) {
    const bool gptq = UsesGptq();
    const GptqOptions g = GptqOptionsOf(weight_step_);
    config["quantization_config"] =
        GptqQuantizationConfig(o_.scheme, gptq && g.act_order, gptq && g.static_groups, g.percdamp);
    if (any_per_ic_) {
      // Not loadable as GPTQ: some layers hold per-IC groups (docs/artifact-format.md).
      nlohmann::json per_ic = nlohmann::json::array();
      for (const auto& l : report_.layers) {
        if (l.details.is_object() && l.details.value("axis", "") == "per_ic") per_ic.push_back(l.name);
      }
      config["quantization_config"]["quant_method"] = "qaas";
      config["quantization_config"]["format"] = "adadim";
      config["quantization_config"]["per_input_channel_layers"] = per_ic;
      format = "adadim";
    }
  } else if (!o_.scheme.weight_only()) {
    format = "qaas";
    config["quantization_config"] = {{"quant_method", "qaas"}, {"format", "float-weights"}};
  }
  if (UsesRptq()) {
    // Reordered norms (reorder_index tensors) and permuted weights: only a
    // runtime that applies the reorder can load it (docs/artifact-format.md).
    format = "rptq";
    config["quantization_config"]["quant_method"] = "qaas";
    config["quantization_config"]["format"] = "rptq";
  }
  if (o_.scheme.activations.enabled()) config["quantization_config"]["activations"] = SpecJson(o_.scheme.activations);
  if (o_.scheme.kv_cache.enabled()) config["quantization_config"]["kv_cache"] = SpecJson(o_.scheme.kv_cache);
  config["qaas_scheme"] = o_.scheme.ToString();
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", config.dump(2) + "\n"));
  std::vector<std::string> out_dirs = {dir};
  if (weight_step_.method == "adadim") {
    const std::string plain_dir = o_.output_dir + "/artifact-dequantized";
    QAAS_RETURN_IF_ERROR(MakeDirs(plain_dir));
    std::vector<RawTensor> plain(tensors.begin(), tensors.begin() + num_head_tensors);
    QAAS_RETURN_IF_ERROR(append_layers("dequantized-layer", &plain));
    QAAS_RETURN_IF_ERROR(WriteSafetensors(plain_dir + "/model.safetensors", plain, {{"format", "pt"}}));
    QAAS_RETURN_IF_ERROR(WriteFileAtomic(plain_dir + "/config.json", original_config.dump(2) + "\n"));
    out_dirs.push_back(plain_dir);
  }
  for (const auto& out : out_dirs) {
    for (const char* f : {"tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                          "special_tokens_map.json", "generation_config.json"}) {
      const std::string from = o_.model_dir + "/" + f;
      if (FileExists(from)) QAAS_RETURN_IF_ERROR(CopyFile(from, out + "/" + f));
    }
  }
  nlohmann::json manifest = o_.manifest_extra;
  manifest["qaas_version"] = QAAS_VERSION;
  manifest["scheme"] = o_.scheme.ToString();
  manifest["recipe"] = RecipeNames();
  manifest["seed"] = o_.seed;
  manifest["format"] = format;
  return WriteFileAtomic(dir + "/qaas_manifest.json", manifest.dump(2) + "\n");
}

absl::StatusOr<nlohmann::json> Pipeline::Run() {
  // No autograd graphs, except where OmniQuant trains (it turns them on).
  c10::NoGradGuard no_grad;
  QAAS_RETURN_IF_ERROR(Prepare());
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
  report_.resumed_layers = o_.resume ? ResumableLayers() : 0;
  for (int i = 0; i < config_.num_layers; ++i) {
    if (o_.should_stop && o_.should_stop()) {
      return absl::CancelledError(absl::StrCat("cancelled at layer ", i, " of ", config_.num_layers));
    }
    try {
      QAAS_RETURN_IF_ERROR(i < report_.resumed_layers ? ReplayLayer(i) : QuantizeLayer(i));
    } catch (const nlohmann::json::exception& e) {
      return absl::DataLossError(absl::StrCat(CheckpointPath("state", i), ": ", e.what()));
    }
    Progress(i + 1, i < report_.resumed_layers ? "layer restored" : "layer done");
  }
  auto t0 = Clock::now();
  for (auto& s : evals_) {
    auto logits = [this](const at::Tensor& hidden) { return model_->Logits(hidden); };
    NllSum orig = WindowsNll(s.original, s.windows, logits);
    NllSum quant = WindowsNll(s.quantized, s.windows, logits);
    report_.evaluations.push_back({s.ref.name, s.ref.seq_len, s.windows.size(0), orig.tokens,
                                   orig.perplexity(), quant.perplexity()});
  }
  report_.seconds_evaluation += Elapsed(t0);
  QAAS_RETURN_IF_ERROR(Assemble());
  report_.seconds_total = Elapsed(start_);
  const PeakMemory peak = ReadPeakMemory(device_);
  report_.peak_host_memory_bytes = peak.host_bytes;
  report_.peak_device_allocated_bytes = peak.device_allocated_bytes;
  report_.peak_device_reserved_bytes = peak.device_reserved_bytes;
  nlohmann::json j = ToJson(report_);
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(o_.output_dir + "/report.json", j.dump(2) + "\n"));
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(o_.output_dir + "/report.md", ToMarkdown(report_)));
  return j;
}

}  // namespace

absl::StatusOr<nlohmann::json> RunPipeline(const PipelineOptions& options) {
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
