// config.json of a Hugging Face causal LM we run: the LLaMA family (model_type
// llama, mistral) and OPT.
#ifndef QAAS_QUANT_MODEL_CONFIG_H_
#define QAAS_QUANT_MODEL_CONFIG_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace qaas::quant {

struct ModelConfig {
  std::string model_type;    // "llama", "mistral" or "opt"
  std::string architecture;  // the forward to run: "llama" (llama, mistral) or "opt"
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
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // OPT: enable_bias
  bool mlp_bias = false;            // OPT: enable_bias
  std::string activation = "silu";  // hidden_act; OPT: activation_function ("relu")
  // OPT only. We run the pre-LayerNorm variant without embedding projections
  // (every OPT but opt-350m); the others are Unimplemented at parse time.
  bool do_layer_norm_before = true;
  int word_embed_proj_dim = 0;  // equals hidden_size
  bool layer_norm_elementwise_affine = true;
  int bos_token_id = 1;
  int eos_token_id = 2;
  std::string torch_dtype = "float32";
  std::string raw_json;  // the file as read, for the artifact's config.json
};

// Parses and validates config.json. InvalidArgument names the field; model
// types and features we do not run (rope_scaling, other activations; for OPT
// do_layer_norm_before=false, word_embed_proj_dim != hidden_size,
// _remove_final_layer_norm) are Unimplemented naming them.
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_MODEL_CONFIG_H_
