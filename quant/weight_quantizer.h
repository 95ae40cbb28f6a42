// The recipe's weight quantizer behind one small interface. The pipeline
// drives every quantizer the same way, as the GPTQ paper's sequential driver
// does: for each group of a layer's linears (DecoderModel::SequentialGroups),
// gather what the quantizer needs from the calibration stream through the
// layer with the earlier groups already quantized, then quantize the group's
// linears. A quantizer says what it needs; a quantizer that learns the whole
// block first (OmniQuant) does so in LearnBlock.
//
// A new weight-quantizer row of the method table (method_table.h) needs a
// case in MakeWeightQuantizer: without one a recipe naming it fails with
// Unimplemented rather than silently running another method.
#ifndef QAAS_QUANT_WEIGHT_QUANTIZER_H_
#define QAAS_QUANT_WEIGHT_QUANTIZER_H_

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/method_table.h"
#include "quant/methods/quantized_linear.h"
#include "quant/model/decoder.h"
#include "quant/scheme.h"

namespace qaas::quant {

// The layer whose linears are being quantized, as a quantizer may look at it.
struct LayerToQuantize {
  const DecoderModel* model = nullptr;
  const DecoderLayer* original = nullptr;   // the float layer as loaded
  const DecoderLayer* quantized = nullptr;  // transformed, with the earlier groups quantized
  // SampleWindows() > 0: the first calibration windows at the layer's input.
  at::Tensor sample;
};

// One linear of that layer.
struct LinearToQuantize {
  int index = 0;     // in DecoderModel::LinearNames()
  at::Tensor weight; // float [out, in], after the recipe's transforms
  // NeedsHessians(): 2/n·XᵀX of its inputs X on the calibration stream.
  at::Tensor hessian;
  // SampleWindows() > 0: its inputs on LayerToQuantize::sample, [windows, T, in].
  at::Tensor sample_inputs;
};

class WeightQuantizer {
 public:
  virtual ~WeightQuantizer() = default;

  // What report.json's layers call the method (e.g. "gptq", "adadim-rtn").
  virtual std::string name() const = 0;
  // Whether each linear must see the layer with the linears of earlier groups
  // already quantized (GPTQ's "true sequential"). False: one group of all.
  virtual bool Sequential() const { return false; }
  virtual bool NeedsHessians() const { return false; }
  // How many of the first calibration windows LayerToQuantize::sample holds.
  virtual int SampleWindows() const { return 0; }
  // Whether the quantizer learns the block before its linears (LearnBlock).
  virtual bool LearnsBlock() const { return false; }
  // Whether the artifact should also hold a plain dequantized copy (AdaDim:
  // its per-IC layers have no common runtime format).
  virtual bool WantsDequantizedCopy() const { return false; }

  // Learns block `layer` (float, its activation quantizers set) so that its
  // quantized output on `inputs` approaches `targets` (the float block on the
  // float model's stream). May replace *layer (transforms folded in); writes
  // what it did to *details. After each epoch, on_epoch(epoch, epochs, mean
  // loss); false stops the training with Cancelled.
  virtual absl::Status LearnBlock(const DecoderModel& model, const at::Tensor& inputs, const at::Tensor& targets,
                                  const std::function<bool(int epoch, int epochs, double loss)>& on_epoch,
                                  DecoderLayer* layer, nlohmann::json* details);
  // Quantizes one linear; *details receives the method's specifics for the
  // layer's report entry.
  virtual absl::StatusOr<QuantizedLinear> Quantize(const LayerToQuantize& layer, const LinearToQuantize& linear,
                                                   nlohmann::json* details) = 0;
};

// The weight quantizer of a recipe's weight step for the scheme's weights.
// InvalidArgument for options the method refuses; Unimplemented for a method
// that is not a weight quantizer here.
absl::StatusOr<std::unique_ptr<WeightQuantizer>> MakeWeightQuantizer(const RecipeStep& step, const Scheme& scheme);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_WEIGHT_QUANTIZER_H_
