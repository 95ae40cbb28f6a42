#include "quant/weight_quantizer.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "quant/methods/adadim.h"
#include "quant/methods/gptq.h"
#include "quant/methods/omniquant.h"
#include "quant/methods/rtn.h"
#include "quant/util/status_macros.h"

namespace qaas::quant {

absl::Status WeightQuantizer::LearnBlock(const DecoderModel&, const at::Tensor&, const at::Tensor&,
                                         const std::function<bool(int, int, double)>&, DecoderLayer*,
                                         nlohmann::json*) {
  return absl::InternalError(absl::StrCat(name(), " does not learn blocks"));
}

namespace {

// Round to nearest, per output channel (or per input channel for AdaDim).
class Rtn : public WeightQuantizer {
 public:
  Rtn(const TensorQuant& spec, bool per_input_channel) : spec_(spec), per_ic_(per_input_channel) {}
  std::string name() const override { return "rtn"; }
  absl::StatusOr<QuantizedLinear> Quantize(const LayerToQuantize&, const LinearToQuantize& linear,
                                           nlohmann::json*) override {
    return per_ic_ ? QuantizeRtnPerInputChannel(linear.weight, spec_) : QuantizeRtn(linear.weight, spec_);
  }

 private:
  TensorQuant spec_;
  bool per_ic_;
};

// GPTQ (quant/methods/gptq.h) from each linear's Hessian, group by group.
class Gptq : public WeightQuantizer {
 public:
  Gptq(const TensorQuant& spec, GptqOptions options) : spec_(spec), options_(options) {}
  std::string name() const override { return "gptq"; }
  bool Sequential() const override { return true; }
  bool NeedsHessians() const override { return true; }
  absl::StatusOr<QuantizedLinear> Quantize(const LayerToQuantize&, const LinearToQuantize& linear,
                                           nlohmann::json* details) override {
    if (!at::isfinite(linear.hessian).all().item<bool>()) {
      return absl::FailedPreconditionError("the Hessian of its calibration inputs is not finite");
    }
    GptqStats stats;
    QAAS_ASSIGN_OR_RETURN(QuantizedLinear q, QuantizeGptq(linear.weight, linear.hessian, spec_, options_, &stats));
    *details = {{"damp", stats.damp}, {"cholesky_retries", stats.cholesky_retries},
                {"dead_columns", stats.dead_columns}};
    return q;
  }

 private:
  TensorQuant spec_;
  GptqOptions options_;
};

// AdaDim: its base quantizer per output channel and per input channel; keeps
// the one whose enclosing block output is closer to the float block's.
class AdaDim : public WeightQuantizer {
 public:
  AdaDim(std::string base, std::unique_ptr<WeightQuantizer> per_oc, std::unique_ptr<WeightQuantizer> per_ic)
      : base_(std::move(base)), per_oc_(std::move(per_oc)), per_ic_(std::move(per_ic)) {}
  std::string name() const override { return "adadim-" + base_; }
  bool Sequential() const override { return true; }
  bool NeedsHessians() const override { return per_oc_->NeedsHessians(); }
  // Candidates are compared on a bounded subset of the calibration windows.
  int SampleWindows() const override { return 16; }
  bool WantsDequantizedCopy() const override { return true; }

  absl::StatusOr<QuantizedLinear> Quantize(const LayerToQuantize& layer, const LinearToQuantize& linear,
                                           nlohmann::json* details) override {
    QAAS_ASSIGN_OR_RETURN(QuantizedLinear oc, per_oc_->Quantize(layer, linear, details));
    nlohmann::json ignored;
    QAAS_ASSIGN_OR_RETURN(QuantizedLinear ic, per_ic_->Quantize(layer, linear, &ignored));
    // The block whose output decides: attention for q/k/v, the MLP for its
    // input projections, the linear itself for the output projections
    // (AdaDim, section 4).
    const DecoderModel& model = *layer.model;
    const at::Tensor& sample = layer.sample;
    const int j = linear.index;
    std::function<at::Tensor(const DecoderLayer&)> block;
    switch (model.DecidingBlock(j)) {
      case AdaDimBlock::kAttention:
        block = [&](const DecoderLayer& l) { return model.AttentionForward(l, sample); };
        break;
      case AdaDimBlock::kMlp: {
        const at::Tensor h = sample + model.AttentionForward(*layer.quantized, sample);
        block = [&model, h](const DecoderLayer& l) { return model.MlpForward(l, h); };
        break;
      }
      case AdaDimBlock::kOwnOutput: {
        const at::Tensor x = linear.sample_inputs;
        block = [x, j](const DecoderLayer& l) { return at::linear(x, l.linears[j].weight); };
        break;
      }
    }
    const at::Tensor reference = block(*layer.original);
    const AdaDimChoice choice = ChooseAxis(oc, ic, reference, [&](const at::Tensor& weight) {
      DecoderLayer candidate = *layer.quantized;
      candidate.linears[j].weight = weight;
      return block(candidate);
    });
    if (!details->is_object()) *details = nlohmann::json::object();
    (*details)["axis"] = choice.per_input_channel ? "per_ic" : "per_oc";
    (*details)["block_mse_per_oc"] = choice.error_per_oc;
    (*details)["block_mse_per_ic"] = choice.error_per_ic;
    return choice.per_input_channel ? std::move(ic) : std::move(oc);
  }

 private:
  std::string base_;
  std::unique_ptr<WeightQuantizer> per_oc_, per_ic_;
};

// OmniQuant: learns the block's clipping (LWC) and, with quantized
// activations, its equivalent transforms (LET); the linears are the learned
// clipping's quantization.
class OmniQuant : public WeightQuantizer {
 public:
  OmniQuant(const Scheme& scheme, OmniQuantOptions options) : scheme_(scheme), options_(options) {}
  std::string name() const override { return "omniquant"; }
  bool LearnsBlock() const override { return true; }

  absl::Status LearnBlock(const DecoderModel& model, const at::Tensor& inputs, const at::Tensor& targets,
                          const std::function<bool(int, int, double)>& on_epoch, DecoderLayer* layer,
                          nlohmann::json* details) override {
    const int epochs = OmniQuantEpochs(options_, scheme_.weights);
    QAAS_ASSIGN_OR_RETURN(OmniQuantResult r,
                          OmniQuantLayer(model, *layer, inputs, targets, scheme_.weights, !scheme_.weight_only(),
                                         options_, [&](int epoch, double loss) {
                                           return !on_epoch || on_epoch(epoch, epochs, loss);
                                         }));
    *layer = std::move(r.folded);
    learned_ = std::move(r.linears);
    *details = std::move(r.details);
    return absl::OkStatus();
  }

  absl::StatusOr<QuantizedLinear> Quantize(const LayerToQuantize&, const LinearToQuantize& linear,
                                           nlohmann::json*) override {
    if (linear.index < 0 || static_cast<size_t>(linear.index) >= learned_.size()) {
      return absl::InternalError(absl::StrCat("omniquant: linear ", linear.index, " was not learned"));
    }
    return learned_[linear.index];
  }

 private:
  Scheme scheme_;
  OmniQuantOptions options_;
  std::vector<QuantizedLinear> learned_;  // of the layer LearnBlock last trained
};

// The quantizer `method` names with `step`'s options, per output channel or
// per input channel.
absl::StatusOr<std::unique_ptr<WeightQuantizer>> Make(const std::string& method, const RecipeStep& step,
                                                      const Scheme& scheme, bool per_input_channel) {
  if (method == "rtn") return std::make_unique<Rtn>(scheme.weights, per_input_channel);
  if (method == "gptq") {
    GptqOptions options = GptqOptionsOf(step);
    options.per_input_channel = per_input_channel;
    return std::make_unique<Gptq>(scheme.weights, options);
  }
  return absl::UnimplementedError(absl::StrCat("method '", method, "' has no weight quantizer"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightQuantizer>> MakeWeightQuantizer(const RecipeStep& step, const Scheme& scheme) {
  if (step.method == "adadim") {
    const std::string base = step.Get("base", std::string("rtn"));
    QAAS_ASSIGN_OR_RETURN(auto per_oc, Make(base, step, scheme, false));
    QAAS_ASSIGN_OR_RETURN(auto per_ic, Make(base, step, scheme, true));
    return std::make_unique<AdaDim>(base, std::move(per_oc), std::move(per_ic));
  }
  if (step.method == "omniquant") {
    const OmniQuantOptions options = OmniQuantOptionsOf(step);
    QAAS_RETURN_IF_ERROR(CheckOmniQuantOptions(options));
    return std::make_unique<OmniQuant>(scheme, options);
  }
  return Make(step.method, step, scheme, false);
}

}  // namespace qaas::quant
