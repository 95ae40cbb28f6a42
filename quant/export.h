// The artifact: a Hugging Face directory whose linear layers are stored in an
// artifact layout chosen by name (ArtifactLayout below). "gptq": the GPTQ
// checkpoint layout (docs/artifact-format.md), loadable by AutoGPTQ /
// GPTQModel / Transformers / vLLM, plus the tokenizer and qaas_manifest.json.
//
// Per quantized linear "<p>" (e.g. model.layers.0.self_attn.q_proj), with
// in x out weights, b bits and G groups:
//   <p>.qweight  int32 [in*b/32, out]  codes packed along the input dimension
//   <p>.qzeros   int32 [G, out*b/32]   (zero - 1) packed along the output dim
//                                      (GPTQ "v1" convention; loaders add 1)
//   <p>.scales   float16 [G, out]
//   <p>.g_idx    int32 [in]            group of each input column
//   <p>.bias     float16 [out]         when the layer has one
// W[o, i] = scales[g_idx[i], o] * (code[i, o] - zero[g_idx[i], o]).
#ifndef QAAS_QUANT_EXPORT_H_
#define QAAS_QUANT_EXPORT_H_

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "quant/method_table.h"
#include "quant/methods/quantized_linear.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/safetensors.h"
#include "quant/scheme.h"

namespace qaas::quant {

// The packed tensors of one linear layer.
std::vector<RawTensor> PackGptqLinear(const std::string& prefix, const QuantizedLinear& q,
                                      const at::Tensor& bias);

// Reads the packed tensors of `prefix` back into a float32 [out, in] weight.
// InvalidArgument naming the tensor when one is missing or mis-shaped.
absl::StatusOr<at::Tensor> UnpackGptqLinear(const std::map<std::string, RawTensor>& tensors,
                                            const std::string& prefix, int bits, int64_t in,
                                            int64_t out);

// The "quantization_config" entry of config.json for a weight scheme;
// desc_act / static_groups / damp_percent describe how GPTQ ran (RTN: defaults).
nlohmann::json GptqQuantizationConfig(const Scheme& scheme, bool desc_act = false,
                                      bool static_groups = false, double damp_percent = 0.01);

// One finished layer, as a layout packs it.
struct LayerToPack {
  std::string prefix;  // "model.layers.<i>."
  const std::vector<std::string>* linear_names = nullptr;
  const DecoderLayer* transformed = nullptr;  // float: norms, biases and activation quantizers after the recipe
  const DecoderLayer* quantized = nullptr;    // as evaluated: the dequantized weights, biases as stored
  // Per linear, what its weight quantizer returned; none: the linear stays float.
  const std::vector<std::optional<QuantizedLinear>>* linears = nullptr;
  const Checkpoint* checkpoint = nullptr;  // the input model (its stored dtypes)
  // Per linear, the activation point whose quantizer reads its input
  // (ActPoint as int); empty when the model does not say.
  const std::vector<int>* input_points = nullptr;
};

// A layer in the checkpoint's own form, what the layouts pack: norm weights
// as the checkpoint stores them (DecoderModel::StoredNorm) and the fused
// projections fused again (DecoderModel::Fusions) under their stored names.
// A fused projection's parts are concatenated by rows: their codes, scales,
// zeros and dequantized weights (their g_idx must agree: they share one
// input, so GPTQ's act-order permutation is the same). Parts quantized
// differently (one float, per-input-channel AdaDim groups, MX beside
// integers) cannot be one packed tensor: for a layout that packs quantized
// weights (`packed`) they stay split under their own names (such artifacts
// are qaas-format already); float layouts always fuse.
struct CheckpointFormLayer {
  std::vector<std::string> linear_names;
  DecoderLayer transformed;
  DecoderLayer quantized;
  std::vector<std::optional<QuantizedLinear>> linears;
  std::vector<int> input_points;  // per linear: the ActPoint at its input
  // A LayerToPack over this layer (valid while it lives).
  LayerToPack View(const std::string& prefix, const Checkpoint* checkpoint) const {
    return {prefix, &linear_names, &transformed, &quantized, &linears, checkpoint, &input_points};
  }
};
absl::StatusOr<CheckpointFormLayer> ToCheckpointForm(const DecoderModel& model, const LayerToPack& layer,
                                                     bool packed);

// What config.json says of the quantization, known once every layer is done.
struct ArtifactSummary {
  Scheme scheme;
  RecipeStep weight_step = {"rtn", {}};  // GPTQ's act_order / static_groups / damp for its config
  bool reordered = false;         // RPTQ permuted channels (reorder_index tensors)
  std::vector<std::string> per_input_channel_layers;  // AdaDim's per-IC linears
  // A mixture of experts: the quantized linears of a block by their names
  // relative to the layer, in true-sequential groups (GPTQ's
  // modules_in_block_to_quantize), so a loader leaves the float router and
  // shared-expert gate alone. Empty: not written (dense models).
  std::vector<std::vector<std::string>> modules_in_block;
  // Modules that stay float beside lm_head, as compressed-tensors' `ignore`
  // names them (exact names or "re:" patterns: a mixture of experts' routers).
  std::vector<std::string> float_modules;
  int head_dim = 0;  // K and V rows per head (a per-head KV cache scheme's groups)
};

// How an artifact stores the quantized model. The pipeline packs each layer
// as it finishes into checkpoints/<checkpoint_stem()>-<i>.safetensors (so a
// resumed run keeps it), and WriteArtifact assembles them at the end.
class ArtifactLayout {
 public:
  virtual ~ArtifactLayout() = default;
  virtual std::string name() const = 0;
  virtual std::string directory() const = 0;        // under the job's output
  virtual std::string checkpoint_stem() const = 0;  // of its per-layer files
  // A quantized linear's bias as the layout stores it: what the quantized
  // model must evaluate.
  virtual at::Tensor StoredBias(const QuantizedLinear& q, const at::Tensor& bias) const { return bias; }
  // Whether PackLayer packs the quantized linears (LayerToPack::linears) or
  // stores float weights only (see CheckpointFormLayer).
  virtual bool PacksQuantized() const { return true; }
  virtual absl::StatusOr<std::vector<RawTensor>> PackLayer(const LayerToPack& layer) const = 0;
  // config.json (from the input model's) and the format the manifest names.
  virtual std::pair<nlohmann::json, std::string> Config(const nlohmann::json& original,
                                                        const ArtifactSummary& summary) const = 0;
};

// "gptq" (artifact/: the GPTQ layout; MX, AdaDim and RPTQ variants as
// docs/artifact-format.md says), "compressed-tensors" (artifact/: what
// vLLM and Transformers load as quant_method "compressed-tensors", for the
// schemes CompressedTensorsFits accepts) or "dequantized"
// (artifact-dequantized/: a plain checkpoint of the evaluated weights in the
// stored dtypes). InvalidArgument naming the known layouts otherwise.
absl::StatusOr<std::unique_ptr<ArtifactLayout>> MakeArtifactLayout(const std::string& name);
std::unique_ptr<ArtifactLayout> MakeCompressedTensorsLayout();

// Transformers' save_pretrained default: shards of at most 5 GB.
constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ull;

// Tensors (by byte size, in order) assigned to shards of at most
// `max_shard_bytes`, in order; a tensor larger than that has a shard alone.
std::vector<std::vector<int>> AssignShards(const std::vector<uint64_t>& bytes, uint64_t max_shard_bytes);
// "model.safetensors" when there is one shard, else Transformers' names
// "model-00001-of-00003.safetensors" (k counts from 0).
std::string ShardFileName(int k, int n);

// One linear read back from a compressed-tensors artifact: the codes in
// qaas's convention (integers: [0, 2^bits) with zero point; MX: element
// codes [out, in] and E8M0 scales [out, ceil(in/32)]) and the float weight
// [out, in] they decode to. InvalidArgument naming the tensor when one is
// missing, mis-typed or mis-shaped.
struct CompressedLinear {
  at::Tensor codes;
  at::Tensor scale;  // float32 [out, groups]; MX: uint8 E8M0 [out, blocks]
  at::Tensor zero;   // float32 [out, groups] (integers only)
  at::Tensor weight;
};
absl::StatusOr<CompressedLinear> ReadCompressedTensorsLinear(const std::map<std::string, RawTensor>& tensors,
                                                             const std::string& prefix,
                                                             const nlohmann::json& quantization_config,
                                                             int64_t out, int64_t in);

// Writes <output_dir>/<layout.directory()>/: the input's head tensors, then
// every layer's checkpoint, streamed tensor by tensor (one in memory at a
// time) into model.safetensors, or, past `max_shard_bytes`, shards with
// model.safetensors.index.json as Transformers writes them; config.json,
// the input's tokenizer files, and qaas_manifest.json (`manifest` plus the
// format) unless `manifest` is null. Weight files of another sharding left
// there earlier are removed. Returns the bytes of the tensors.
absl::StatusOr<uint64_t> WriteArtifact(const ArtifactLayout& layout, const Checkpoint& checkpoint,
                                       const std::vector<std::string>& head_tensor_names, int num_layers,
                                       const std::string& model_dir, const std::string& output_dir,
                                       const ArtifactSummary& summary, nlohmann::json manifest,
                                       uint64_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EXPORT_H_
