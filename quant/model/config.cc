#include "quant/model/config.h"

#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "quant/util/status_macros.h"

namespace qaas::quant {
namespace {

using nlohmann::json;

absl::Status GetInt(const json& j, const char* key, bool required, int& out) {
  if (!j.contains(key) || j[key].is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing '", key, "'"));
    return absl::OkStatus();
  }
  if (!j[key].is_number_integer() || j[key].get<int64_t>() <= 0 || j[key].get<int64_t>() > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", key, "' must be a positive integer, got ", j[key].dump()));
  }
  out = j[key].get<int>();
  return absl::OkStatus();
}

absl::Status GetBool(const json& j, const char* key, bool& out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' must be a boolean"));
  }
  out = j[key].get<bool>();
  return absl::OkStatus();
}

// OPT (Hugging Face OPTConfig): pre-LayerNorm decoder with learned positions.
absl::StatusOr<ModelConfig> ParseOptConfig(const json& j, ModelConfig c) {
  c.architecture = "opt";
  for (auto [key, out, required] :
       {std::tuple<const char*, int*, bool>{"hidden_size", &c.hidden_size, true},
        {"ffn_dim", &c.intermediate_size, true},
        {"num_hidden_layers", &c.num_layers, true},
        {"num_attention_heads", &c.num_heads, true},
        {"vocab_size", &c.vocab_size, true},
        {"max_position_embeddings", &c.max_position_embeddings, true},
        {"word_embed_proj_dim", &c.word_embed_proj_dim, false}}) {
    QAAS_RETURN_IF_ERROR(GetInt(j, key, required, *out));
  }
  if (c.hidden_size % c.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: hidden_size ", c.hidden_size,
                                                   " is not divisible by num_attention_heads ",
                                                   c.num_heads));
  }
  c.num_kv_heads = c.num_heads;
  c.head_dim = c.hidden_size / c.num_heads;
  if (c.word_embed_proj_dim == 0) c.word_embed_proj_dim = c.hidden_size;
  c.tie_word_embeddings = true;  // OPTConfig's default
  bool enable_bias = true, remove_final_layer_norm = false;
  for (auto [key, out] :
       {std::pair<const char*, bool*>{"do_layer_norm_before", &c.do_layer_norm_before},
        {"enable_bias", &enable_bias},
        {"layer_norm_elementwise_affine", &c.layer_norm_elementwise_affine},
        {"tie_word_embeddings", &c.tie_word_embeddings},
        {"_remove_final_layer_norm", &remove_final_layer_norm}}) {
    QAAS_RETURN_IF_ERROR(GetBool(j, key, *out));
  }
  c.attention_bias = c.mlp_bias = enable_bias;
  c.activation = "relu";
  if (j.contains("activation_function") && !j["activation_function"].is_null()) {
    if (!j["activation_function"].is_string()) {
      return absl::InvalidArgumentError("config.json: 'activation_function' must be a string");
    }
    c.activation = j["activation_function"].get<std::string>();
  }
  if (c.activation != "relu") {
    return absl::UnimplementedError(absl::StrCat("config.json: activation_function '", c.activation,
                                                 "' is not supported for OPT (relu)"));
  }
  if (!c.do_layer_norm_before) {
    return absl::UnimplementedError(
        "config.json: do_layer_norm_before=false (post-LayerNorm OPT, as opt-350m) is not "
        "supported");
  }
  if (c.word_embed_proj_dim != c.hidden_size) {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: word_embed_proj_dim ", c.word_embed_proj_dim, " differs from hidden_size ",
        c.hidden_size, " (project_in/project_out, as opt-350m): not supported"));
  }
  if (remove_final_layer_norm) {
    return absl::UnimplementedError("config.json: _remove_final_layer_norm=true is not supported");
  }
  // OPTConfig's defaults: </s> (2) opens and closes sequences.
  c.bos_token_id = 2;
  c.eos_token_id = 2;
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int>();
  }
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) {
    c.eos_token_id = j["eos_token_id"].get<int>();
  }
  // transformers 5 writes "dtype", earlier versions "torch_dtype" (preferred when both are there).
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (j.contains(key) && j[key].is_string()) c.torch_dtype = j[key].get<std::string>();
  }
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  ModelConfig c;
  c.raw_json = std::string(json_text);
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    return absl::InvalidArgumentError("config.json: missing 'model_type'");
  }
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type == "opt") return ParseOptConfig(j, std::move(c));
  if (c.model_type != "llama" && c.model_type != "mistral") {
    return absl::UnimplementedError(absl::StrCat("config.json: model_type '", c.model_type,
                                                 "' is not supported (llama, mistral, opt)"));
  }
  c.architecture = "llama";
  for (auto [key, out, required] :
       {std::tuple<const char*, int*, bool>{"hidden_size", &c.hidden_size, true},
        {"intermediate_size", &c.intermediate_size, true},
        {"num_hidden_layers", &c.num_layers, true},
        {"num_attention_heads", &c.num_heads, true},
        {"num_key_value_heads", &c.num_kv_heads, false},
        {"head_dim", &c.head_dim, false},
        {"vocab_size", &c.vocab_size, true},
        {"max_position_embeddings", &c.max_position_embeddings, true}}) {
    QAAS_RETURN_IF_ERROR(GetInt(j, key, required, *out));
  }
  if (c.num_kv_heads == 0) c.num_kv_heads = c.num_heads;
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: hidden_size ", c.hidden_size,
                                                     " is not divisible by num_attention_heads ",
                                                     c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: head_dim ", c.head_dim, " is odd"));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: num_attention_heads ", c.num_heads,
                                                   " is not a multiple of num_key_value_heads ",
                                                   c.num_kv_heads));
  }
  auto get_number = [&](const char* key, double& out) -> absl::Status {
    if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
    if (!j[key].is_number() || j[key].get<double>() <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: '", key, "' must be a positive number, got ", j[key].dump()));
    }
    out = j[key].get<double>();
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(get_number("rms_norm_eps", c.rms_norm_eps));
  QAAS_RETURN_IF_ERROR(get_number("rope_theta", c.rope_theta));
  auto get_bool = [&](const char* key, bool& out) -> absl::Status {
    if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
    if (!j[key].is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", key, "' must be a boolean"));
    }
    out = j[key].get<bool>();
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(get_bool("tie_word_embeddings", c.tie_word_embeddings));
  QAAS_RETURN_IF_ERROR(get_bool("attention_bias", c.attention_bias));
  QAAS_RETURN_IF_ERROR(get_bool("mlp_bias", c.mlp_bias));
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: hidden_act ", j["hidden_act"].dump(), " is not supported (silu)"));
  }
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return absl::UnimplementedError("config.json: rope_scaling is not supported yet");
  }
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int>();
  }
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) {
    c.eos_token_id = j["eos_token_id"].get<int>();
  }
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    c.torch_dtype = j["torch_dtype"].get<std::string>();
  }
  return c;
}

}  // namespace qaas::quant
