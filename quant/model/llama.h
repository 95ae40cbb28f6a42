// The LLaMA decoder in libtorch, as Hugging Face's LlamaForCausalLM computes it,
// with the features of the families that share its layout (Mistral, Qwen2,
// Qwen3, Gemma 2/3, Phi-3): pre-norm RMSNorm (Gemma: (1 + w), and sandwich
// norms around both blocks), rotary position embeddings in the rotate-half
// layout with Transformers' frequency scalings (on all or the first
// rotary_dim channels of a head; Gemma 3: a local RoPE on sliding layers),
// grouped-query attention with a causal mask (and a sliding window on the
// layers that have one, and a soft-cap on the scores), q/k/v and o biases,
// per-head q/k RMSNorm (Qwen3, Gemma 3), gated MLP (SiLU or GELU-tanh), tied
// or separate output head. Phi-3's fused qkv_proj / gate_up_proj are split
// on load. All computation in float32 on the tensors' device.
#ifndef QAAS_QUANT_MODEL_LLAMA_H_
#define QAAS_QUANT_MODEL_LLAMA_H_

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/formats/act_quant.h"
#include "quant/model/checkpoint.h"
#include "quant/model/config.h"

namespace qaas::quant {

struct Linear {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
};

// One decoder layer's weights. `linears` follows LinearNames() order. Norm
// weights are the factors the norms multiply by (Gemma: 1 + the stored w).
struct LlamaLayer {
  int index = -1;         // the layer's place in the model (its sliding window)
  at::Tensor input_norm;  // input_layernorm.weight
  // The MLP's input norm: post_attention_layernorm.weight (Gemma:
  // pre_feedforward_layernorm.weight).
  at::Tensor post_norm;
  // Gemma 2/3: post_attention_layernorm / post_feedforward_layernorm on the
  // blocks' outputs, before the residuals; undefined elsewhere.
  at::Tensor attn_out_norm;
  at::Tensor mlp_out_norm;
  // Qwen3, Gemma 3: self_attn.q_norm.weight / k_norm.weight ([head_dim],
  // shared by the heads); undefined elsewhere.
  at::Tensor q_norm;
  at::Tensor k_norm;
  // Mixture of experts: the router [num_experts, hidden] and Qwen2-MoE's
  // shared-expert gate [1, hidden] (never quantized); undefined when dense.
  // The experts' linears follow the attention's in `linears`
  // (LinearNamesOf).
  at::Tensor router;
  at::Tensor shared_expert_gate;
  // With a hook: every expert observes every token (DecoderModel::
  // set_experts_observe_all_tokens); else its routed ones.
  bool experts_observe_all_tokens = false;
  // With a hook and >= 0: only this routed expert runs (the others, and a
  // shared expert, are skipped), so gathering one expert's statistics costs
  // the router and that expert, not the whole MLP; the output is then not
  // the layer's (DecoderModel::set_observed_expert).
  int observe_only_expert = -1;
  std::vector<Linear> linears;
  // RPTQ's reordered norms: the norm reads its input channels in this order
  // (int64 [hidden]; its weight is stored permuted), so its output comes out
  // reordered at no cost. Undefined: no reorder.
  at::Tensor input_reorder;
  at::Tensor post_reorder;
  // Activation / KV-cache quantization; null: the float layer.
  std::shared_ptr<const LayerActQuant> act;
  // By LlamaLinearNames() (a dense layer's names; a MoE layer's attention).
  Linear& linear(const std::string& name);
  const Linear& linear(const std::string& name) const;
  LlamaLayer To(const at::Device& device) const;
};

// The linear layers of a decoder layer, by their Hugging Face names relative
// to "model.layers.<i>.": self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj.
// (Phi-3 stores q/k/v and gate/up fused; the layer holds them split.)
const std::vector<std::string>& LlamaLinearNames();
std::string LayerPrefix(int index);  // "model.layers.<i>."
// The linears of a layer of this config: LlamaLinearNames() when dense; for
// a mixture of experts the attention's four, then each expert's gate, up
// and down (Mixtral: block_sparse_moe.experts.<j>.w1 / w3 / w2; Qwen:
// mlp.experts.<j>.gate_proj / up_proj / down_proj), then the shared
// expert's (mlp.shared_expert.*).
std::vector<std::string> LinearNamesOf(const ModelConfig& config);
// The router's and the shared-expert gate's tensor names.
std::string RouterName(const ModelConfig& config);
std::string SharedExpertGateName(const ModelConfig& config);

// The norms of a layer by their checkpoint names relative to LayerPrefix():
// the attention's input norm, the MLP's input norm, and (Gemma) the norms on
// the blocks' outputs (empty elsewhere).
struct LlamaNormNames {
  std::string attn_in, mlp_in, attn_out, mlp_out;
};
LlamaNormNames NormNamesOf(const ModelConfig& config);

// Reads layer `index`, checking every shape against config.json.
absl::StatusOr<LlamaLayer> LoadLlamaLayer(const Checkpoint& ck, int index);

// Embedding, final norm and output head.
struct LlamaHead {
  at::Tensor embed;       // [vocab, hidden]
  at::Tensor final_norm;  // [hidden], the factor (Gemma: 1 + w)
  at::Tensor lm_head;     // [vocab, hidden]; the embedding when tied
};
absl::StatusOr<LlamaHead> LoadLlamaHead(const Checkpoint& ck);

// Rotary tables and attention masks. cos/sin follow Transformers'
// rope_init_fn for the config's rope type (default, linear, dynamic, yarn,
// longrope, llama3), computed in float32 as Transformers computes them, cos
// and sin already multiplied by the type's attention factor.
class Rope {
 public:
  Rope(const ModelConfig& config, int64_t max_len, const at::Device& device);
  // cos and sin [T, rotary_dim] for a forward over positions 0..T-1; `local`:
  // the sliding layers' RoPE where the model has one (Gemma 3). Dynamic NTK
  // and LongRoPE change their frequencies with the sequence length (past the
  // original context); the others are one table.
  std::pair<at::Tensor, at::Tensor> Tables(int64_t T, bool local = false) const;
  // The additive mask [T, T]: 0 where query i may see key j (j <= i, and
  // i - j < window when window > 0), -inf elsewhere.
  at::Tensor Mask(int64_t T, int window) const;
  // The inverse frequencies [rotary_dim / 2] (float32) for a forward of
  // `seq_len` positions, and the factor cos and sin are scaled by.
  static std::pair<at::Tensor, double> InverseFrequencies(const ModelConfig& config, int64_t seq_len);

  at::Tensor cos;  // [max_len, rotary_dim], for sequences up to the original context
  at::Tensor sin;
  at::Tensor causal_mask;  // [max_len, max_len]: 0 on and below the diagonal, -inf above

 private:
  // One RoPE's frequencies: its config (theta and scaling) and the longest
  // forward its cached tables serve (max_len, or less where dynamic NTK and
  // LongRoPE change their frequencies past the original context).
  struct Variant {
    ModelConfig config;
    at::Tensor cos, sin;
    int64_t serve = 0;
  };
  Variant MakeVariant(const ModelConfig& config, int64_t max_len) const;
  std::pair<at::Tensor, at::Tensor> TablesOf(const Variant& v, int64_t T) const;

  at::Device device_;
  Variant global_;
  std::shared_ptr<const Variant> local_;  // Gemma 3's sliding layers; null elsewhere
  // causal_mask with each of the config's sliding windows applied, by window.
  std::map<int, at::Tensor> window_masks_;
};
// Where the tokens of a packed batch sit, for a forward over sequences that
// share a prefix (a zero-shot task's choices after one context): each token
// has its position in its own sequence and attends only to the tokens of
// that sequence before it. Without a layout a forward is over plain causal
// sequences at positions 0..T-1.
struct TokenLayout {
  at::Tensor positions;  // int64 [B, T]
  // int64 [B, T]: 0 for a token every later token of its row attends to
  // (a shared context), k > 0 for a token only later tokens of branch k
  // attend to (a continuation). Query i attends to key j <= i when j's
  // branch is 0 or i's own.
  at::Tensor branches;
  // The additive attention mask [B, 1, T, T], 0 where visible (and, when
  // window > 0, fewer than `window` positions back), -inf elsewhere.
  at::Tensor Mask(int window) const;
  // One past the largest position (the rotary tables' length).
  int64_t max_position = 0;
};

// Sees the input of each linear layer as a 2-D [tokens, in] tensor, e.g. to
// accumulate GPTQ Hessians. Called once per linear, q/k/v with the same input,
// after activation quantization (what the linear computes with).
using LinearInputHook = std::function<void(const std::string& name, const at::Tensor& x)>;

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);
// The MLP's activation by config.activation's name: silu, gelu_pytorch_tanh.
at::Tensor Activation(const std::string& name, const at::Tensor& x);

// x through `act`'s quantizer for point p; x itself when act is null.
at::Tensor QuantizeActivation(const std::shared_ptr<const LayerActQuant>& act, ActPoint p, const at::Tensor& x);
// K or V ([..., head_dim]) through the KV-cache quantizer.
at::Tensor QuantizeKv(const std::shared_ptr<const LayerActQuant>& act, const at::Tensor& x);
// x's last dimension gathered in `reorder`'s order; x when undefined.
at::Tensor Reorder(const at::Tensor& x, const at::Tensor& reorder);

// Causal attention of q, k, v [BH, T, hd], nothing to learn: query i's output
// is the softmax (of scale * q_i . k_j) weighted sum of the values over keys
// i - window < j <= i (window 0: every j <= i); `mask` is the same as an
// additive [T, T] mask (Rope::Mask). Heads of at most kSmallHeadMaxDim in
// float32 on a CPU that has AVX2 run the small-head kernel
// (small_head_attention.h), the rest chunked matrix products.
at::Tensor CausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                           int window, double scale);
// Its form for larger heads (SmallHeadCausalAttention is the other), for
// tests and benchmarks.
at::Tensor ChunkedCausalAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& mask, int window, double scale);

// The two halves of a decoder layer, without their residual connections:
// the attention block's output (o_proj's output) for the layer input, and the
// MLP block's output (down_proj's output) for the post-attention hidden state.
// `layout`: a packed batch's positions and mask (null: causal, 0..T-1).
at::Tensor LlamaAttentionForward(const LlamaLayer& layer, const ModelConfig& config, const Rope& rope,
                                 const at::Tensor& hidden, const LinearInputHook& hook = nullptr,
                                 const TokenLayout* layout = nullptr);
at::Tensor LlamaMlpForward(const LlamaLayer& layer, const ModelConfig& config, const at::Tensor& hidden,
                           const LinearInputHook& hook = nullptr);
// The experts each token of `hidden` [..., hidden] is routed to: int64
// [tokens, top_k] and their weights float [tokens, top_k], as the family's
// router computes them.
std::pair<at::Tensor, at::Tensor> RouteTokens(const LlamaLayer& layer, const ModelConfig& config,
                                              const at::Tensor& hidden);

// hidden: [batch, seq, hidden] -> same shape.
at::Tensor LlamaLayerForward(const LlamaLayer& layer, const ModelConfig& config, const Rope& rope,
                             const at::Tensor& hidden, const LinearInputHook& hook = nullptr,
                             const TokenLayout* layout = nullptr);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_LLAMA_H_
