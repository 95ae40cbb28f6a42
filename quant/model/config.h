// config.json of a Hugging Face causal LM we run: the LLaMA-like families
// (model_type llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, and
// the mixtures of experts mixtral, qwen2_moe, qwen3_moe: one forward with
// per-family features) and OPT.
//
// Nothing in a config is silently ignored: every key is either read (and
// changes the computation as Transformers' does), or on an explicit list of
// keys known not to change a forward (token ids, dropout, generation
// settings, bookkeeping), or accepted only at a neutral value. Any other key
// is Unimplemented naming it, so a model whose computation we would get wrong
// is refused rather than quantized.
#ifndef QAAS_QUANT_MODEL_CONFIG_H_
#define QAAS_QUANT_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qaas::quant {

// Rotary position embedding frequencies, as Transformers' rope_scaling (or
// rope_parameters) defines them (modeling_rope_utils.py).
struct RopeScaling {
  // "default" (none), "linear", "dynamic", "yarn", "longrope" or "llama3".
  std::string type = "default";
  // The scaling factor; 0 when not given (yarn and longrope then use
  // max_position_embeddings / original_max_position_embeddings).
  double factor = 0.0;
  // The context the model was pre-trained with (llama3, yarn, longrope): the
  // config's top-level key (Phi-3), else rope_scaling's, else
  // max_position_embeddings.
  int original_max_position_embeddings = 0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0: absent
  double mscale_all_dim = 0.0;  // 0: absent
  bool truncate = true;
  // yarn, longrope: the factor cos and sin are multiplied by; < 0: derived.
  double attention_factor = -1.0;
  // longrope: per-frequency divisors for short and long contexts.
  std::vector<double> short_factor;
  std::vector<double> long_factor;
};

// A mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE): a router picks
// top_k of num_experts SwiGLU experts per token (softmax over all, then the
// top k, renormalized when norm_topk_prob); Qwen2-MoE adds a shared expert
// behind a sigmoid gate. Every layer is sparse (models mixing dense layers
// are refused).
struct MoeConfig {
  int num_experts = 0;  // 0: a dense model
  int top_k = 0;
  int expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  int shared_expert_intermediate_size = 0;  // 0: no shared expert
  // Tensor names relative to the layer prefix: "block_sparse_moe" with
  // experts.<j>.w1 / w3 / w2 (Mixtral), or "mlp" with experts.<j>.gate_proj /
  // up_proj / down_proj (Qwen); the router is <block>.gate.weight.
  std::string block;
  bool mixtral_names = false;
};

struct ModelConfig {
  std::string model_type;    // "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3" or "opt"
  std::string architecture;  // the forward to run: "llama" (the LLaMA-like families) or "opt"
  int hidden_size = 0;
  int intermediate_size = 0;  // OPT: ffn_dim
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // The channels of a head RoPE rotates: the first rotary_dim (pairs i and
  // i + rotary_dim / 2); the rest pass through (Phi-3's partial_rotary_factor).
  // head_dim unless the config says otherwise.
  int rotary_dim = 0;
  // Gemma 3: the sliding-window layers' own RoPE (rope_local_base_freq, or
  // rope_parameters.sliding_attention); the global layers use the above.
  bool local_rope = false;
  double local_rope_theta = 10000.0;
  RopeScaling local_rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v (and o unless attention_out_bias says otherwise); OPT: enable_bias
  bool attention_out_bias = false;  // o_proj (Qwen2: q/k/v biased, o not)
  bool mlp_bias = false;            // OPT: enable_bias
  // Per-head RMSNorm of q and k (over head_dim) before RoPE: Qwen3's
  // self_attn.q_norm / k_norm.
  bool qk_norm = false;
  // Sliding-window attention: token i sees tokens j with i - window < j <= i
  // on the layers where layer_window[layer] > 0 (Mistral's sliding_window on
  // every layer; Qwen2/3's on layers >= max_window_layers when
  // use_sliding_window). Empty: full attention everywhere.
  std::vector<int> layer_window;
  std::string activation = "silu";  // hidden_act ("silu"; Gemma: hidden_activation "gelu_pytorch_tanh"); OPT: "relu"
  // Gemma: every RMSNorm multiplies by (1 + w) where the checkpoint stores w.
  // Layers hold the factor 1 + w (norm_weight_offset = 1); export subtracts it.
  double norm_weight_offset = 0.0;
  // Gemma 2/3: the attention and MLP outputs are normalized before their
  // residuals (post_attention_layernorm, post_feedforward_layernorm) and the
  // MLP reads pre_feedforward_layernorm.
  bool sandwich_norms = false;
  // Embeddings are multiplied by this (Gemma: sqrt(hidden_size), rounded to
  // the model's dtype as Transformers computes it).
  double embed_scale = 1.0;
  // Attention scores are q k^T * attention_scale (head_dim^-0.5; Gemma:
  // query_pre_attn_scalar^-0.5).
  double attention_scale = 0.0;
  // Soft-capping cap * tanh(x / cap) of the attention scores and of the
  // output logits (Gemma 2); 0: none.
  double attn_logit_softcap = 0.0;
  double final_logit_softcap = 0.0;
  // Phi-3 stores q/k/v as one self_attn.qkv_proj and gate/up as one
  // mlp.gate_up_proj. They are split on load (each part quantized as its own
  // linear: rows are independent for every quantizer we run, and the parts
  // share their input, so the result equals quantizing the fused matrix) and
  // re-fused on export under the checkpoint's names (with per-tensor weight
  // scales each part keeps its own scale).
  bool fused_qkv = false;
  bool fused_gate_up = false;
  MoeConfig moe;  // num_experts 0: dense
  // OPT only. We run the pre-LayerNorm variant without embedding projections
  // (every OPT but opt-350m); the others are Unimplemented at parse time.
  bool do_layer_norm_before = true;
  int word_embed_proj_dim = 0;  // equals hidden_size
  bool layer_norm_elementwise_affine = true;
  int bos_token_id = 1;
  int eos_token_id = 2;
  std::string torch_dtype = "float32";
  std::string raw_json;  // the file as read, for the artifact's config.json

  // The sliding window of layer `index` (0: full attention).
  int WindowOf(int index) const {
    return index >= 0 && index < static_cast<int>(layer_window.size()) ? layer_window[index] : 0;
  }
};

// Parses and validates config.json. InvalidArgument names the field; model
// types, keys and values whose computation we do not run (an unknown
// rope_scaling type, another activation, a key not known to be harmless; for
// OPT do_layer_norm_before=false, word_embed_proj_dim != hidden_size,
// _remove_final_layer_norm) are Unimplemented naming them.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

// The input widths of the model's linears: hidden_size (q/k/v, the MLP's
// inputs), num_heads x head_dim (o_proj), and the MLP's intermediate sizes
// (down_proj: the dense one, or every expert's and the shared expert's; a
// mixture of experts' dense intermediate_size feeds no linear).
std::vector<int64_t> LinearInputWidths(const ModelConfig& config);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_CONFIG_H_
