#include "quant/pipeline.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quant/data/text_dataset.h"
#include "quant/eval/perplexity.h"
#include "quant/export.h"
#include "quant/methods/rtn.h"
#include "quant/model/checkpoint.h"
#include "quant/model/llama.h"
#include "quant/model/tokenizer.h"
#include "quant/report.h"
#include "quant/util/files.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

const std::vector<std::string>& ImplementedMethods() {
  static const std::vector<std::string> kMethods = {"rtn"};
  return kMethods;
}

namespace {

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

// Runs `layer` over `hidden` in batches of `batch` windows.
at::Tensor ForwardBatched(const LlamaLayer& layer, const ModelConfig& c, const Rope& rope,
                          const at::Tensor& hidden, int batch, const LinearInputHook& hook = nullptr) {
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < hidden.size(0); i += batch) {
    const int64_t n = std::min<int64_t>(batch, hidden.size(0) - i);
    outs.push_back(LlamaLayerForward(layer, c, rope, hidden.narrow(0, i, n), hook));
  }
  return at::cat(outs, 0);
}

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
  explicit Pipeline(const PipelineOptions& o) : o_(o), device_(o.device) {}

  absl::StatusOr<nlohmann::json> Run();

 private:
  absl::Status Prepare();
  absl::Status QuantizeLayer(int i);
  absl::Status Assemble();
  void Progress(int layer, const char* step) {
    if (o_.on_progress) o_.on_progress({layer, config_.num_layers, step});
  }

  const PipelineOptions& o_;
  at::Device device_;
  std::unique_ptr<Checkpoint> ck_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  LlamaHead head_;
  std::unique_ptr<Rope> rope_;
  at::Tensor calib_;  // hidden states of the calibration stream (quantized model)
  std::vector<EvalStream> evals_;
  Report report_;
  Clock::time_point start_ = Clock::now();
};

absl::Status Pipeline::Prepare() {
  for (const auto& m : o_.recipe) {
    const auto& impl = ImplementedMethods();
    if (std::find(impl.begin(), impl.end(), m) == impl.end()) {
      return absl::UnimplementedError(absl::StrCat("method '", m, "' is not implemented"));
    }
  }
  if (!o_.scheme.weight_only()) {
    return absl::UnimplementedError(absl::StrCat("scheme ", o_.scheme.ToString(),
                                                 ": activation and KV-cache quantization are not implemented yet"));
  }
  if (o_.scheme.weights.enabled() && o_.scheme.weights.format != NumberFormat::kInt) {
    return absl::UnimplementedError(absl::StrCat("scheme ", o_.scheme.ToString(), ": weight format ",
                                                 NumberFormatName(o_.scheme.weights.format),
                                                 " is not implemented yet"));
  }
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
  auto head = LoadLlamaHead(*ck_);
  if (!head.ok()) return head.status();
  head_ = *std::move(head);

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
  if (o_.calibration) {
    const int seq_len = ResolveSeqLen(o_.calibration->seq_len, context, "calibration", &seq_error);
    QAAS_RETURN_IF_ERROR(seq_error);
    auto text = LoadDatasetText(o_.calibration->path);
    if (!text.ok()) {
      return absl::Status(text.status().code(), absl::StrCat("calibration: ", text.status().message()));
    }
    auto windows = SampleCalibrationWindows(tokenizer_->Encode(*text), o_.num_samples, seq_len, o_.seed);
    if (!windows.ok()) return windows.status();
    calib_ = at::embedding(head_.embed, *windows).to(device_);
    report_.calibration = {{"dataset", o_.calibration->name}, {"num_samples", o_.num_samples},
                           {"seq_len", seq_len}, {"seed", o_.seed}, {"tokens", windows->numel()}};
    max_len = std::max(max_len, seq_len);
  }
  head_.embed = head_.embed.to(device_);
  head_.final_norm = head_.final_norm.to(device_);
  head_.lm_head = head_.lm_head.to(device_);
  for (auto& s : evals_) {
    s.original = at::embedding(head_.embed, s.windows.to(device_));
    s.quantized = s.original;
  }
  rope_ = std::make_unique<Rope>(config_, max_len, device_);
  return MakeDirs(o_.output_dir + "/checkpoints");
}

absl::Status Pipeline::QuantizeLayer(int i) {
  Progress(i, "loading");
  auto loaded = LoadLlamaLayer(*ck_, i);
  if (!loaded.ok()) return loaded.status();
  LlamaLayer original = loaded->To(device_);

  auto t0 = Clock::now();
  for (auto& s : evals_) s.original = ForwardBatched(original, config_, *rope_, s.original, o_.batch_size);
  report_.seconds_evaluation += SecondsSince(t0);

  // Quantize each linear from its original weights.
  Progress(i, "quantizing");
  LlamaLayer quantized = original;
  std::vector<RawTensor> packed;
  packed.push_back(TensorToRaw(LayerPrefix(i) + "input_layernorm.weight", original.input_norm.cpu()));
  packed.push_back(TensorToRaw(LayerPrefix(i) + "post_attention_layernorm.weight", original.post_norm.cpu()));
  for (size_t j = 0; j < LlamaLinearNames().size(); ++j) {
    const std::string name = LayerPrefix(i) + LlamaLinearNames()[j];
    const Linear& lin = original.linears[j];
    LayerReport lr;
    lr.name = name;
    auto tq = Clock::now();
    if (o_.scheme.weights.enabled()) {
      lr.method = o_.recipe.back();
      QuantizedLinear q = QuantizeRtn(lin.weight, o_.scheme.weights);
      quantized.linears[j].weight = q.dequantized;
      lr.relative_weight_error = RelativeError(lin.weight, q.dequantized);
      for (auto& t : PackGptqLinear(name, q, lin.bias)) packed.push_back(std::move(t));
    } else {
      lr.method = "none";
      packed.push_back(TensorToRaw(name + ".weight", lin.weight.cpu()));
      if (lin.bias.defined()) packed.push_back(TensorToRaw(name + ".bias", lin.bias.cpu()));
    }
    lr.seconds = SecondsSince(tq);
    report_.seconds_quantization += lr.seconds;
    report_.layers.push_back(lr);
  }

  // Calibration stream: the next layer sees the quantized layer's outputs.
  if (calib_.defined()) {
    Progress(i, "calibrating");
    auto tc = Clock::now();
    at::Tensor ref = ForwardBatched(original, config_, *rope_, calib_, o_.batch_size);
    at::Tensor next = ForwardBatched(quantized, config_, *rope_, calib_, o_.batch_size);
    report_.blocks.push_back({i, RelativeError(ref, next)});
    calib_ = next;
    report_.seconds_calibration += SecondsSince(tc);
  }

  Progress(i, "evaluating");
  t0 = Clock::now();
  for (auto& s : evals_) s.quantized = ForwardBatched(quantized, config_, *rope_, s.quantized, o_.batch_size);
  report_.seconds_evaluation += SecondsSince(t0);
  return WriteSafetensors(absl::StrFormat("%s/checkpoints/layer-%d.safetensors", o_.output_dir, i), packed);
}

absl::Status Pipeline::Assemble() {
  Progress(config_.num_layers, "exporting");
  const std::string dir = o_.output_dir + "/artifact";
  QAAS_RETURN_IF_ERROR(MakeDirs(dir));
  std::vector<RawTensor> tensors;
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}) {
    if (!ck_->Has(name)) continue;
    auto raw = ck_->LoadRaw(name);
    if (!raw.ok()) return raw.status();
    tensors.push_back(*std::move(raw));
  }
  for (int i = 0; i < config_.num_layers; ++i) {
    const std::string path = absl::StrFormat("%s/checkpoints/layer-%d.safetensors", o_.output_dir, i);
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) return f.status();
    for (const auto& [name, entry] : (*f)->header().tensors) {
      auto bytes = (*f)->ReadRaw(name);
      if (!bytes.ok()) return bytes.status();
      tensors.push_back({name, entry.dtype, entry.shape, *std::move(bytes)});
    }
  }
  uint64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.data.size();
  report_.quantized_bytes = bytes;
  QAAS_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));

  auto config = nlohmann::json::parse(config_.raw_json);
  if (o_.scheme.weights.enabled()) config["quantization_config"] = GptqQuantizationConfig(o_.scheme);
  config["qaas_scheme"] = o_.scheme.ToString();
  QAAS_RETURN_IF_ERROR(WriteFileAtomic(dir + "/config.json", config.dump(2) + "\n"));
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"}) {
    const std::string from = o_.model_dir + "/" + f;
    if (FileExists(from)) QAAS_RETURN_IF_ERROR(CopyFile(from, dir + "/" + f));
  }
  nlohmann::json manifest = o_.manifest_extra;
  manifest["qaas_version"] = QAAS_VERSION;
  manifest["scheme"] = o_.scheme.ToString();
  manifest["recipe"] = o_.recipe;
  manifest["seed"] = o_.seed;
  manifest["format"] = "gptq";
  return WriteFileAtomic(dir + "/qaas_manifest.json", manifest.dump(2) + "\n");
}

absl::StatusOr<nlohmann::json> Pipeline::Run() {
  c10::InferenceMode inference;
  QAAS_RETURN_IF_ERROR(Prepare());
  report_.scheme = o_.scheme.ToString();
  report_.recipe = o_.recipe;
  report_.model = o_.model_dir;
  report_.num_layers = config_.num_layers;
  report_.original_bytes = ck_->total_bytes();
  report_.device = o_.device;
  for (int i = 0; i < config_.num_layers; ++i) {
    if (o_.should_stop && o_.should_stop()) {
      return absl::CancelledError(absl::StrCat("cancelled at layer ", i, " of ", config_.num_layers));
    }
    QAAS_RETURN_IF_ERROR(QuantizeLayer(i));
    Progress(i + 1, "layer done");
  }
  auto t0 = Clock::now();
  for (auto& s : evals_) {
    NllSum orig = WindowsNll(s.original, s.windows, head_, config_.rms_norm_eps);
    NllSum quant = WindowsNll(s.quantized, s.windows, head_, config_.rms_norm_eps);
    report_.evaluations.push_back({s.ref.name, s.ref.seq_len, s.windows.size(0), orig.tokens,
                                   orig.perplexity(), quant.perplexity()});
  }
  report_.seconds_evaluation += SecondsSince(t0);
  QAAS_RETURN_IF_ERROR(Assemble());
  report_.seconds_total = SecondsSince(start_);
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
