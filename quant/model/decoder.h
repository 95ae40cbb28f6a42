// The decoder architectures the pipeline quantizes (the LLaMA-like families,
// OPT) behind one
// interface: what a layer holds, how its linears are grouped, how a layer,
// its attention block and its MLP block run, and which tensors of the
// checkpoint form the unquantized head. The pipeline sees only this; the
// per-architecture code lives in llama.h and opt.h.
#ifndef QAAS_QUANT_MODEL_DECODER_H_
#define QAAS_QUANT_MODEL_DECODER_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/model/checkpoint.h"
#include "quant/model/config.h"
#include "quant/model/llama.h"  // Linear, LinearInputHook

namespace qaas::quant {

// One decoder layer's weights, architecture-neutral.
struct DecoderLayer {
  int index = -1;  // the layer's place in the model (which sliding window it has)
  // The layer's float tensors no method quantizes, by their names relative
  // to the layer prefix: the norm parameters (e.g. "input_layernorm.weight",
  // "self_attn_layer_norm.bias"), in checkpoint order, absent when the
  // architecture has none (no affine); a mixture of experts' router
  // ("block_sparse_moe.gate.weight") and shared-expert gate.
  // RPTQ adds "<norm>.reorder_index" (int64): the order the norm reads its
  // input channels in (LlamaLayer::input_reorder).
  std::vector<std::pair<std::string, at::Tensor>> norms;
  std::vector<Linear> linears;  // in the model's LinearNames() order
  // Activation / KV-cache quantization; null: the float layer.
  std::shared_ptr<const LayerActQuant> act;
  // The norm called `name`, or an undefined tensor.
  at::Tensor norm(const std::string& name) const;
  // Sets (adding when absent) the norm tensor `name`.
  void set_norm(const std::string& name, const at::Tensor& t);
  DecoderLayer To(const at::Device& device) const;
};

// Which block's output decides AdaDim's axis for a linear (AdaDim, section 4).
enum class AdaDimBlock {
  kAttention,  // q/k/v: the attention block
  kMlp,        // the MLP's input projections (LLaMA gate/up, OPT fc1)
  kOwnOutput,  // the attention output and MLP output projections
};

// The norm in front of a block (ActPoint kAttnIn or kMlpIn), by tensor names
// relative to the layer prefix.
struct BlockNorm {
  std::string weight;   // empty when the norm has no affine weight
  std::string bias;     // empty when it has none (RMSNorm)
  std::string reorder;  // where RPTQ's reorder index goes
};

// How attention's q and k channels are laid out, for transforms that scale
// them in opposite directions (OmniQuant's LET: q / s, k * s leaves q k^T
// unchanged only if s commutes with everything between the projections and
// the product).
struct QueryKeyLayout {
  // RoPE rotates channel i with channel i + rotary_dim / 2 (i < rotary_dim /
  // 2) by one angle, so a scale must be equal on both; channels from
  // rotary_dim on (Phi-3's partial rotary) pass unrotated and take their own.
  // 0: no RoPE.
  int64_t rotary_dim = 0;
  // Per-head RMSNorms of q and k before RoPE (Qwen3, Gemma 3), by tensor
  // names relative to the layer prefix; empty when there are none. A norm
  // makes a row scale of q_proj / k_proj vanish, so the scale goes into the
  // norms' weights instead, which are shared by the heads: s of shape
  // [Factors(head_dim)] rather than [kv_heads, Factors(head_dim)].
  std::string q_norm;
  std::string k_norm;

  // Independent factors per head of head_dim channels.
  int64_t Factors(int64_t head_dim) const { return head_dim - rotary_dim / 2; }
  // s [..., Factors(head_dim)] -> [..., head_dim]: each rotated pair's factor
  // on both its channels, then the unrotated channels' own.
  at::Tensor Expand(const at::Tensor& s) const;
};

// A group of a layer's linears quantized together (GPTQ's "true
// sequential"): they share one input, and the groups run in the order the
// layer's forward consumes them.
struct LinearGroup {
  // "qkv", "o", "gate_up", "down" (OPT: "out", "fc1", "fc2"; a mixture of
  // experts: "expert.<j>.gate_up", "expert.<j>.down", "shared_expert.*")
  std::string name;
  std::vector<int> linears;  // indices into LinearNames()
  int expert = -1;  // a mixture of experts' routed expert the group belongs to; -1: none
};

// A projection the checkpoint stores fused (Phi-3's qkv_proj, gate_up_proj):
// its name relative to the layer prefix and the linears it concatenates by
// rows, in order.
struct FusedLinear {
  std::string name;       // "self_attn.qkv_proj"
  std::vector<int> parts;  // indices into LinearNames()
};

// A decoder-only model read from a checkpoint. Holds the head (embeddings,
// final norm, output head) on `device`; layers are loaded one at a time.
// Not thread-safe; the checkpoint must outlive the model.
class DecoderModel {
 public:
  // Picks the architecture by config.architecture ("llama" or "opt") and
  // loads the head onto `device`. `max_len` is the longest sequence any
  // forward will see (LLaMA's rotary tables). InvalidArgument naming the
  // tensor when the head is missing or mis-shaped, or the architecture is
  // not one of ours.
  static absl::StatusOr<std::unique_ptr<DecoderModel>> Create(const Checkpoint& ck,
                                                              const at::Device& device,
                                                              int64_t max_len);
  virtual ~DecoderModel() = default;

  // The linears of a layer by their Hugging Face names relative to LayerPrefix().
  virtual const std::vector<std::string>& LinearNames() const = 0;
  // GPTQ's "true sequential" groups, in the order a layer's forward
  // consumes them.
  virtual const std::vector<LinearGroup>& SequentialGroups() const = 0;
  // The checkpoint's fused projections (empty: every linear is stored as
  // LinearNames() names it).
  virtual const std::vector<FusedLinear>& Fusions() const = 0;
  virtual AdaDimBlock DecidingBlock(int linear) const = 0;
  // The linears whose input is activation point p (indices into LinearNames()).
  virtual const std::vector<int>& ConsumersOf(ActPoint p) const = 0;
  // The linears whose output rows become p's channels, one to one: v_proj for
  // kAttnOut (per head), the MLP's input projections for kMlpHidden; empty for
  // the norm-fed points.
  virtual const std::vector<int>& ProducersOf(ActPoint p) const = 0;
  // The consumers of p whose observed inputs together show every value of
  // p: the first consumer where they all share one input; on a mixture of
  // experts each MLP's first (an expert observes the tokens routed to it;
  // together they observe every token, and each expert's hidden state).
  virtual std::vector<int> ObserversOf(ActPoint p) const { return {ConsumersOf(p).front()}; }
  // The layer's float tensors ([out, in], DecoderLayer::norms names) that
  // read p besides its consumers: a mixture of experts' router and
  // shared-expert gate read kMlpIn. A transform that scales or reorders p's
  // channels does the same to their columns, or routing would change.
  virtual std::vector<std::string> FloatReadersOf(ActPoint /*p*/) const { return {}; }
  // The norm feeding kAttnIn or kMlpIn. Layers hold norm weights as the
  // factors the norms multiply by, so folding a scale into one is the same
  // for every family; StoredNorm() turns a factor back into the checkpoint's
  // form.
  virtual BlockNorm NormOf(ActPoint p) const = 0;
  // A layer norm tensor (a DecoderLayer::norms entry) as the checkpoint
  // stores it: Gemma's w = factor - 1; the others as they are.
  virtual at::Tensor StoredNorm(const std::string& name, const at::Tensor& t) const = 0;
  virtual QueryKeyLayout QueryKey() const = 0;
  virtual const ModelConfig& config() const = 0;
  // "model.layers.<i>." (LLaMA), "model.decoder.layers.<i>." (OPT).
  virtual std::string LayerPrefix(int index) const = 0;
  // The checkpoint's tensors that stay unquantized outside the layers
  // (embeddings, final norm, lm_head when stored), as the checkpoint names them.
  virtual std::vector<std::string> HeadTensorNames() const = 0;

  // Reads layer `index` to the CPU, checking every shape against config.json.
  virtual absl::StatusOr<DecoderLayer> LoadLayer(int index) const = 0;

  // ids: int64 [batch, seq] on any device -> hidden [batch, seq, hidden] on
  // the model's device.
  virtual at::Tensor Embed(const at::Tensor& ids) const = 0;
  // The attention block's output without the residual, for the layer input.
  virtual at::Tensor AttentionForward(const DecoderLayer& layer, const at::Tensor& hidden,
                                      const LinearInputHook& hook = nullptr) const = 0;
  // The MLP block's output without the residual, for the hidden state after
  // the attention residual.
  virtual at::Tensor MlpForward(const DecoderLayer& layer, const at::Tensor& hidden,
                                const LinearInputHook& hook = nullptr) const = 0;
  // hidden: [batch, seq, hidden] -> same shape: both blocks with their residuals.
  virtual at::Tensor LayerForward(const DecoderLayer& layer, const at::Tensor& hidden,
                                  const LinearInputHook& hook = nullptr) const = 0;
  // A packed batch (zero-shot tasks: sequences sharing a prefix): ids int64
  // [batch, seq] at `layout`'s positions, and a layer over hidden states of
  // that layout (its positions and mask instead of causal 0..seq-1).
  virtual at::Tensor Embed(const at::Tensor& ids, const TokenLayout& layout) const = 0;
  virtual at::Tensor LayerForward(const DecoderLayer& layer, const at::Tensor& hidden,
                                  const TokenLayout& layout) const = 0;
  // Final hidden states [..., hidden] -> float32 logits [..., vocab]: the
  // final norm, then the output head.
  virtual at::Tensor Logits(const at::Tensor& hidden) const = 0;

  // A mixture of experts' calibration: with `all` a forward given a hook
  // shows every expert every token (its statistics only: routing and outputs
  // are unchanged; each expert computes on all tokens, top_k/num_experts of
  // which it keeps); else each expert observes the tokens routed to it.
  // Dense models ignore it.
  virtual void set_experts_observe_all_tokens(bool /*all*/) {}
  // For gathering one routed expert's statistics: with `expert` >= 0 a
  // forward given a hook runs the router and only that expert's MLP (what
  // it observes is what the full forward shows it; the forward's output is
  // NOT the layer's); -1 (the default) runs the whole layer. Dense models
  // ignore it.
  virtual void set_observed_expert(int /*expert*/) {}
};

// Runs `layer` over `hidden` [n, T, hidden] in batches of `batch` windows
// (bounding the activations' memory); the outputs concatenated.
at::Tensor ForwardBatched(const DecoderModel& model, const DecoderLayer& layer, const at::Tensor& hidden, int batch,
                          const LinearInputHook& hook = nullptr);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_DECODER_H_
