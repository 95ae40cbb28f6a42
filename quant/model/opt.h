// The OPT decoder in libtorch, as Hugging Face's OPTForCausalLM computes it
// (pre-LayerNorm variant, do_layer_norm_before=true): token embedding plus a
// learned position embedding read at offset 2, LayerNorm (eps 1e-5) with bias
// before attention and before the MLP, multi-head attention with biased
// q/k/v/out projections, q scaled by head_dim^-0.5 and a causal mask, ReLU MLP
// fc1/fc2 with biases, a final LayerNorm, and an output head tied to the
// token embedding unless the checkpoint has lm_head.weight. All computation
// in float32 on the tensors' device. ParseModelConfig rejects the variants we
// do not run (post-LayerNorm, embedding projections: opt-350m).
#ifndef QAAS_QUANT_MODEL_OPT_H_
#define QAAS_QUANT_MODEL_OPT_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/model/checkpoint.h"
#include "quant/model/config.h"
#include "quant/model/llama.h"  // Linear, LinearInputHook

namespace qaas::quant {

// OPT's learned positions are stored from row 2 on (fairseq kept rows 0 and 1
// for padding): position p reads row p + 2 of embed_positions.
constexpr int64_t kOptPositionOffset = 2;
constexpr double kOptLayerNormEps = 1e-5;  // torch.nn.LayerNorm's default, which OPT uses

// A LayerNorm's affine parameters; both undefined when
// layer_norm_elementwise_affine is false.
struct LayerNormWeights {
  at::Tensor weight;  // [hidden]
  at::Tensor bias;    // [hidden]
};

// One decoder layer's weights. `linears` follows OptLinearNames() order; their
// biases are undefined when enable_bias is false.
struct OptLayer {
  LayerNormWeights self_attn_layer_norm;  // before attention
  LayerNormWeights final_layer_norm;      // before the MLP (Hugging Face's name)
  std::vector<Linear> linears;
  // RPTQ's reordered norms and the activation quantizers, as LlamaLayer's.
  at::Tensor self_attn_reorder;
  at::Tensor final_reorder;
  std::shared_ptr<const LayerActQuant> act;
  Linear& linear(const std::string& name);  // throws std::out_of_range for other names
  const Linear& linear(const std::string& name) const;
  OptLayer To(const at::Device& device) const;
};

// The linear layers of a decoder layer, by their Hugging Face names relative
// to the layer prefix: self_attn.{q,k,v,out}_proj, fc1, fc2.
const std::vector<std::string>& OptLinearNames();

// Where the decoder's tensors live: "model.decoder." (OPTForCausalLM, as
// transformers saves it) or "decoder." (OPTModel checkpoints, as some
// original facebook/opt-* uploads are), whichever holds embed_tokens.weight.
std::string OptDecoderPrefix(const Checkpoint& ck);
std::string OptLayerPrefix(const Checkpoint& ck, int index);  // "<decoder prefix>layers.<i>."

// Reads layer `index`, checking every shape against config.json.
// InvalidArgument naming the tensor when one is missing or mis-shaped;
// FailedPrecondition when the checkpoint is not an OPT model.
absl::StatusOr<OptLayer> LoadOptLayer(const Checkpoint& ck, int index);

// Embeddings, final norm and output head.
struct OptHead {
  at::Tensor embed_tokens;      // [vocab, hidden]
  at::Tensor embed_positions;   // [max_position_embeddings + 2, hidden]
  LayerNormWeights final_norm;  // the decoder's final_layer_norm
  at::Tensor lm_head;           // [vocab, hidden]; embed_tokens when tied
};
// As LoadOptLayer. The head is lm_head.weight when stored, else embed_tokens
// (InvalidArgument when neither is possible: untied and no lm_head.weight).
absl::StatusOr<OptHead> LoadOptHead(const Checkpoint& ck);

// ids: int64 [batch, seq] -> [batch, seq, hidden]: token embedding plus the
// position embedding Hugging Face computes from an all-ones attention mask
// (position i reads row i + 2). Needs seq <= max_position_embeddings (callers
// cut windows to the context); longer inputs throw c10::Error.
// `positions` (int64, ids' shape): each token's own position instead.
at::Tensor OptEmbed(const OptHead& head, const at::Tensor& ids, const at::Tensor& positions = {});

// LayerNorm over the last dimension with OPT's eps.
at::Tensor OptLayerNorm(const at::Tensor& x, const LayerNormWeights& norm);

// The two halves of a decoder layer, without their residual connections:
// the attention block's output (out_proj's output) for the layer input, and
// the MLP block's output (fc2's output) for the post-attention hidden state.
// `layout`: a packed batch's mask (null: causal).
at::Tensor OptAttentionForward(const OptLayer& layer, const ModelConfig& config,
                               const at::Tensor& hidden, const LinearInputHook& hook = nullptr,
                               const TokenLayout* layout = nullptr);
at::Tensor OptMlpForward(const OptLayer& layer, const ModelConfig& config, const at::Tensor& hidden,
                         const LinearInputHook& hook = nullptr);

// hidden: [batch, seq, hidden] -> same shape. The hook sees each linear's
// input as a 2-D [tokens, in] tensor, in OptLinearNames() order: q/k/v the
// normalised input, out_proj the attention output, fc1 the normalised hidden
// state, fc2 the ReLU output.
at::Tensor OptLayerForward(const OptLayer& layer, const ModelConfig& config,
                           const at::Tensor& hidden, const LinearInputHook& hook = nullptr,
                           const TokenLayout* layout = nullptr);

// hidden after the last layer [..., hidden] -> logits [..., vocab]: the final
// LayerNorm, then the head.
at::Tensor OptLogits(const OptHead& head, const ModelConfig& config, const at::Tensor& hidden);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_OPT_H_
