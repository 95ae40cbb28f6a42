#include "quant/model/config.h"

#include <cmath>
#include <map>
#include <set>
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

// Keys of any Transformers config that change no forward pass: token ids,
// dropout (off at inference), generation settings, bookkeeping.
bool HarmlessKey(const std::string& key) {
  static const std::set<std::string> kKeys = {
      "_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
      "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "unk_token_id",
      "decoder_start_token_id", "initializer_range", "use_cache", "attention_dropout", "hidden_dropout",
      "embd_pdrop", "resid_pdrop", "dropout", "tokenizer_class", "output_attentions", "output_hidden_states",
      "return_dict", "torchscript", "use_return_dict", "id2label", "label2id", "problem_type",
      "task_specific_params", "finetuning_task", "prefix", "max_length", "min_length", "do_sample",
      "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
      "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
      "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
      "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
      "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "chunk_size_feed_forward",
      "pruned_heads", "tf_legacy_loss", "use_bfloat16", "_attn_implementation_autoset", "is_decoder",
      "cross_attention_hidden_size", "cache_implementation",
      // MoE training only: the auxiliary load-balancing loss, router noise.
      "output_router_logits", "router_aux_loss_coef", "router_jitter_noise",
  };
  return kKeys.count(key) > 0;
}

// Keys accepted only at the value that changes nothing; any other value is a
// computation we do not run.
const std::map<std::string, json>& NeutralKeys() {
  static const auto* kKeys = new std::map<std::string, json>{
      {"pretraining_tp", 1},  // Llama 2's sliced linears
      {"use_mrope", false},   // Qwen2-VL's multimodal RoPE
      {"add_cross_attention", false},
      {"is_encoder_decoder", false},
      {"tie_encoder_decoder", false},
      {"attn_logit_softcapping", nullptr},
      {"final_logit_softcapping", nullptr},
      {"partial_rotary_factor", 1.0},
      {"mlp_bias", false},         // families without a bias in the MLP
      {"attention_bias", false},   // families without attention biases (Phi-3)
      // Phi-4-mini's config carries these; Phi3Config reads none of them,
      // and at these values they describe what Transformers computes.
      {"lm_head_bias", false},
      {"full_attn_mod", 1},
      {"interpolate_factor", 1},
  };
  return *kKeys;
}

// Keys a LLaMA-like family reads (beyond HarmlessKey).
const std::set<std::string>& FamilyKeys(const std::string& model_type) {
  static const std::set<std::string> kCommon = {
      "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
      "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
      "rope_parameters", "tie_word_embeddings", "hidden_act"};
  static const auto* kFamilies = new std::map<std::string, std::set<std::string>>{
      {"llama", {"attention_bias", "mlp_bias"}},
      {"mistral", {"sliding_window"}},
      {"qwen2", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"qwen3", {"attention_bias", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"}},
      {"gemma2", {"attention_bias", "sliding_window", "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping",
                  "final_logit_softcapping", "hidden_activation", "use_bidirectional_attention",
                  // Released Gemma 2 configs repeat the window here; Transformers reads sliding_window.
                  "sliding_window_size"}},
      {"gemma3_text", {"attention_bias", "sliding_window", "layer_types", "query_pre_attn_scalar",
                       "attn_logit_softcapping", "final_logit_softcapping", "hidden_activation",
                       "use_bidirectional_attention", "rope_local_base_freq", "sliding_window_pattern",
                       // Transformers 5 saves it beside layer_types, which decide (it reads only
                       // sliding_window_pattern, and only without layer_types).
                       "_sliding_window_pattern"}},
      {"phi3", {"sliding_window", "original_max_position_embeddings", "partial_rotary_factor"}},
      {"mixtral", {"sliding_window", "num_local_experts", "num_experts_per_tok"}},
      {"qwen2_moe", {"sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "num_experts",
                     "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                     "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "qkv_bias"}},
      {"qwen3_moe", {"attention_bias", "sliding_window", "use_sliding_window", "max_window_layers", "layer_types",
                     "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
                     "decoder_sparse_step", "mlp_only_layers"}},
  };
  static const auto* kMerged = [] {
    auto* merged = new std::map<std::string, std::set<std::string>>;
    for (const auto& [family, keys] : *kFamilies) {
      auto& m = (*merged)[family];
      m = kCommon;
      m.insert(keys.begin(), keys.end());
    }
    return merged;
  }();
  return kMerged->at(model_type);
}

// Every key of `j` is read by the family, harmless, or at its neutral value.
absl::Status CheckKeys(const json& j, const std::string& model_type) {
  const auto& family = FamilyKeys(model_type);
  for (const auto& [key, value] : j.items()) {
    if (family.count(key) || HarmlessKey(key)) continue;
    auto neutral = NeutralKeys().find(key);
    if (neutral != NeutralKeys().end()) {
      if (value == neutral->second) continue;
      return absl::UnimplementedError(absl::StrCat("config.json: '", key, "' = ", value.dump(),
                                                   " is not supported for model_type '", model_type, "' (only ",
                                                   neutral->second.dump(), ")"));
    }
    return absl::UnimplementedError(absl::StrCat(
        "config.json: key '", key, "' is not one qaas reads or knows to be harmless for model_type '", model_type,
        "'; it may change the computation, so the model is refused rather than quantized wrongly"));
  }
  return absl::OkStatus();
}

absl::Status PositiveNumber(const json& j, const std::string& where, const char* key, double& out) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  if (!j[key].is_number() || !(j[key].get<double>() > 0) || !std::isfinite(j[key].get<double>())) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", where, key, "' must be a positive number, got ", j[key].dump()));
  }
  out = j[key].get<double>();
  return absl::OkStatus();
}

// One RoPE parameter object (rope_scaling, rope_parameters, or one of Gemma
// 3's per-layer-type entries) into *theta / *s. `where` prefixes the keys in
// errors ("rope_scaling.").
absl::Status ParseRopeObject(const json& j, const json& r, const std::string& where, bool has_theta,
                             const ModelConfig& c, double* theta, RopeScaling* s) {
  if (!r.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: '", where.substr(0, where.size() - 1),
                                                   "' must be an object"));
  }
  std::string type = "default";
  for (const char* key : {"type", "rope_type"}) {
    if (!r.contains(key)) continue;
    if (!r[key].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", where, key, "' must be a string"));
    }
    type = r[key].get<std::string>();
  }
  // Phi-3's configs name LongRoPE "su" (and "yarn"), which Transformers runs as longrope.
  if (c.model_type == "phi3" && (type == "su" || type == "yarn")) type = "longrope";
  static const std::map<std::string, std::set<std::string>> kTypeKeys = {
      {"default", {}},
      {"linear", {"factor"}},
      {"dynamic", {"factor", "original_max_position_embeddings"}},
      {"yarn", {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                "attention_factor", "truncate"}},
      {"longrope", {"factor", "original_max_position_embeddings", "short_factor", "long_factor", "attention_factor"}},
      {"llama3", {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}},
  };
  auto known = kTypeKeys.find(type);
  if (known == kTypeKeys.end()) {
    return absl::UnimplementedError(absl::StrCat("config.json: ", where.substr(0, where.size() - 1), " type '", type,
                                                 "' is not supported (default, linear, dynamic, yarn, longrope, llama3)"));
  }
  for (const auto& [key, value] : r.items()) {
    if (key == "type" || key == "rope_type" || known->second.count(key)) continue;
    if (key == "rope_theta" && has_theta) continue;
    if (key == "partial_rotary_factor" && has_theta) continue;  // read with the top-level key
    return absl::UnimplementedError(
        absl::StrCat("config.json: '", where, key, "' is not supported for rope type '", type, "'"));
  }
  s->type = type;
  if (has_theta) QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "rope_theta", *theta));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "factor", s->factor));
  if (type == "linear" || type == "dynamic" || type == "llama3") {
    if (!r.contains("factor")) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: '", where, "factor' is required for rope type '", type, "'"));
    }
    if (s->factor < 1.0) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", where, "factor' must be >= 1, got ", s->factor));
    }
  }
  double original = 0;
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "original_max_position_embeddings", original));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "low_freq_factor", s->low_freq_factor));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "high_freq_factor", s->high_freq_factor));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "beta_fast", s->beta_fast));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "beta_slow", s->beta_slow));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "mscale", s->mscale));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "mscale_all_dim", s->mscale_all_dim));
  QAAS_RETURN_IF_ERROR(PositiveNumber(r, where, "attention_factor", s->attention_factor));
  if (r.contains("truncate")) {
    if (!r["truncate"].is_boolean()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", where, "truncate' must be a boolean"));
    }
    s->truncate = r["truncate"].get<bool>();
  }
  if (type == "llama3" && !(s->high_freq_factor > s->low_freq_factor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: '", where, "high_freq_factor' must exceed low_freq_factor"));
  }
  // Phi-3 keeps original_max_position_embeddings at the top level, and
  // Transformers prefers it there.
  double top = 0;
  QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "original_max_position_embeddings", top));
  s->original_max_position_embeddings = static_cast<int>(top > 0 ? top : original);
  if (type == "longrope") {
    // One factor per rotated frequency: rotary_dim / 2 of them.
    for (auto [key, out] : {std::pair<const char*, std::vector<double>*>{"short_factor", &s->short_factor},
                            {"long_factor", &s->long_factor}}) {
      if (!r.contains(key) || !r[key].is_array() || r[key].size() * 2 != static_cast<size_t>(c.rotary_dim)) {
        return absl::InvalidArgumentError(absl::StrCat("config.json: '", where, key,
                                                       "' must be a list of rotary_dim / 2 = ", c.rotary_dim / 2,
                                                       " positive numbers"));
      }
      for (const json& v : r[key]) {
        if (!v.is_number() || !(v.get<double>() > 0)) {
          return absl::InvalidArgumentError(
              absl::StrCat("config.json: '", where, key, "' holds ", v.dump(), ", not a positive number"));
        }
        out->push_back(v.get<double>());
      }
    }
  }
  if (s->original_max_position_embeddings == 0) s->original_max_position_embeddings = c.max_position_embeddings;
  return absl::OkStatus();
}

// The fraction of each head RoPE rotates (Phi-3's partial_rotary_factor, at
// the top level or in rope_parameters) into c->rotary_dim.
absl::Status ParseRotaryDim(const json& j, ModelConfig* c) {
  double factor = 1.0;
  QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "partial_rotary_factor", factor));
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    QAAS_RETURN_IF_ERROR(PositiveNumber(j["rope_parameters"], "rope_parameters.", "partial_rotary_factor", factor));
  }
  if (factor != 1.0 && c->model_type != "phi3") {
    return absl::UnimplementedError(absl::StrCat("config.json: 'partial_rotary_factor' = ", factor,
                                                 " is not supported for model_type '", c->model_type, "' (only 1.0)"));
  }
  if (factor > 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: 'partial_rotary_factor' must be in (0, 1], got ", factor));
  }
  c->rotary_dim = static_cast<int>(c->head_dim * factor);  // Transformers: int(head_dim * factor)
  if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: partial_rotary_factor ", factor, " of head_dim ",
                                                   c->head_dim, " rotates ", c->rotary_dim,
                                                   " channels; RoPE needs a positive even number"));
  }
  return absl::OkStatus();
}

// rope_scaling (or Transformers 5's rope_parameters, which also carries
// rope_theta) into c->rope_scaling / c->rope_theta; for Gemma 3 also the
// sliding layers' local RoPE.
absl::Status ParseRope(const json& j, ModelConfig* c) {
  QAAS_RETURN_IF_ERROR(ParseRotaryDim(j, c));
  if (c->model_type == "gemma3_text") {
    // Two RoPEs: the global layers' (rope_theta, rope_scaling) and the
    // sliding layers' (rope_local_base_freq, unscaled); Transformers 5 writes
    // both as rope_parameters.{full_attention, sliding_attention}.
    c->local_rope = true;
    c->rope_theta = 1e6;  // Gemma3TextConfig's defaults
    c->local_rope_theta = 1e4;
    QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "rope_theta", c->rope_theta));
    QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "rope_local_base_freq", c->local_rope_theta));
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      QAAS_RETURN_IF_ERROR(
          ParseRopeObject(j, j["rope_scaling"], "rope_scaling.", false, *c, &c->rope_theta, &c->rope_scaling));
    }
    if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
      const json& r = j["rope_parameters"];
      if (!r.is_object()) return absl::InvalidArgumentError("config.json: 'rope_parameters' must be an object");
      for (const auto& [key, value] : r.items()) {
        if (key == "full_attention") {
          QAAS_RETURN_IF_ERROR(ParseRopeObject(j, value, "rope_parameters.full_attention.", true, *c, &c->rope_theta,
                                               &c->rope_scaling));
        } else if (key == "sliding_attention") {
          QAAS_RETURN_IF_ERROR(ParseRopeObject(j, value, "rope_parameters.sliding_attention.", true, *c,
                                               &c->local_rope_theta, &c->local_rope_scaling));
        } else {
          return absl::UnimplementedError(absl::StrCat("config.json: 'rope_parameters.", key,
                                                       "' is not supported (full_attention, sliding_attention)"));
        }
      }
    }
    if (c->local_rope_scaling.original_max_position_embeddings == 0) {
      c->local_rope_scaling.original_max_position_embeddings = c->max_position_embeddings;
    }
  } else {
    for (const char* field : {"rope_scaling", "rope_parameters"}) {
      if (!j.contains(field) || j[field].is_null()) continue;
      QAAS_RETURN_IF_ERROR(ParseRopeObject(j, j[field], absl::StrCat(field, "."),
                                           std::string(field) == "rope_parameters", *c, &c->rope_theta,
                                           &c->rope_scaling));
    }
  }
  if (c->rope_scaling.original_max_position_embeddings == 0) {
    c->rope_scaling.original_max_position_embeddings = c->max_position_embeddings;
  }
  return absl::OkStatus();
}

// Which layers attend through a sliding window, per family.
absl::Status ParseSlidingWindow(const json& j, ModelConfig* c) {
  const bool gemma = c->model_type == "gemma2" || c->model_type == "gemma3_text";
  int window = gemma ? 4096 : 0;  // Gemma2Config / Gemma3TextConfig default sliding_window
  if (j.contains("sliding_window")) {
    window = 0;
    // null or 0 (Qwen2-MoE saves 0 without use_sliding_window): no window.
    const json& w = j["sliding_window"];
    if (!w.is_null() && !(w.is_number_integer() && w.get<int64_t>() == 0)) {
      QAAS_RETURN_IF_ERROR(GetInt(j, "sliding_window", true, window));
    }
  }
  if (window == 0) {
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      for (const json& t : j["layer_types"]) {
        if (t != "full_attention") {
          return absl::InvalidArgumentError(
              absl::StrCat("config.json: layer_types names ", t.dump(), " but sliding_window is not set"));
        }
      }
    }
    return absl::OkStatus();
  }
  std::vector<bool> sliding(c->num_layers, false);
  if (c->model_type == "mistral" || c->model_type == "phi3" || c->model_type == "mixtral") {
    sliding.assign(c->num_layers, true);
  } else if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const json& types = j["layer_types"];
    if (!types.is_array() || types.size() != static_cast<size_t>(c->num_layers)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: 'layer_types' must list num_hidden_layers = ",
                                                     c->num_layers, " entries"));
    }
    for (int i = 0; i < c->num_layers; ++i) {
      if (types[i] == "sliding_attention") {
        sliding[i] = true;
      } else if (types[i] != "full_attention") {
        return absl::UnimplementedError(absl::StrCat("config.json: layer_types[", i, "] ", types[i].dump(),
                                                     " is not supported (full_attention, sliding_attention)"));
      }
    }
  } else if (gemma) {
    // Without layer_types: every `pattern`-th layer is global, the others
    // slide (Gemma 2 alternates; Gemma 3's sliding_window_pattern, 6).
    int pattern = c->model_type == "gemma2" ? 2 : 6;
    if (c->model_type == "gemma3_text") QAAS_RETURN_IF_ERROR(GetInt(j, "sliding_window_pattern", false, pattern));
    for (int i = 0; i < c->num_layers; ++i) sliding[i] = (i + 1) % pattern != 0;
  } else {
    bool use = false;
    QAAS_RETURN_IF_ERROR(GetBool(j, "use_sliding_window", use));
    int from = c->num_layers;
    if (j.contains("max_window_layers") && !j["max_window_layers"].is_null()) {
      if (!j["max_window_layers"].is_number_integer() || j["max_window_layers"].get<int64_t>() < 0) {
        return absl::InvalidArgumentError("config.json: 'max_window_layers' must be a non-negative integer");
      }
      from = static_cast<int>(std::min<int64_t>(j["max_window_layers"].get<int64_t>(), c->num_layers));
    }
    if (use) {
      for (int i = from; i < c->num_layers; ++i) sliding[i] = true;
    }
  }
  c->layer_window.assign(c->num_layers, 0);
  for (int i = 0; i < c->num_layers; ++i) c->layer_window[i] = sliding[i] ? window : 0;
  return absl::OkStatus();
}

// A soft-cap value: absent -> `fallback`, null -> none (0), else positive.
absl::Status GetSoftcap(const json& j, const char* key, double fallback, double& out) {
  out = fallback;
  if (!j.contains(key)) return absl::OkStatus();
  out = 0;
  return PositiveNumber(j, "", key, out);
}

// Gemma 2 / Gemma 3: (1 + w) norms, sandwich norms, GELU-tanh, embeddings
// scaled by sqrt(hidden) in the model dtype, query_pre_attn_scalar, soft-caps.
absl::Status ParseGemma(const json& j, ModelConfig* c) {
  c->norm_weight_offset = 1.0;
  c->sandwich_norms = true;
  c->qk_norm = c->model_type == "gemma3_text";
  c->activation = "gelu_pytorch_tanh";
  if (j.contains("hidden_activation") && !j["hidden_activation"].is_null()) {
    if (j["hidden_activation"] != "gelu_pytorch_tanh") {
      return absl::UnimplementedError(absl::StrCat("config.json: hidden_activation ", j["hidden_activation"].dump(),
                                                   " is not supported (gelu_pytorch_tanh)"));
    }
  }
  double scalar = 256;  // query_pre_attn_scalar's default in both configs
  QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "query_pre_attn_scalar", scalar));
  c->attention_scale = 1.0 / std::sqrt(scalar);
  const bool gemma2 = c->model_type == "gemma2";
  QAAS_RETURN_IF_ERROR(GetSoftcap(j, "attn_logit_softcapping", gemma2 ? 50.0 : 0.0, c->attn_logit_softcap));
  QAAS_RETURN_IF_ERROR(GetSoftcap(j, "final_logit_softcapping", gemma2 ? 30.0 : 0.0, c->final_logit_softcap));
  if (j.contains("use_bidirectional_attention") && !j["use_bidirectional_attention"].is_null() &&
      j["use_bidirectional_attention"] != false) {
    return absl::UnimplementedError("config.json: 'use_bidirectional_attention' = true is not supported (causal only)");
  }
  // sqrt(hidden_size) as a float32 tensor cast to the model's dtype
  // (Transformers' embed_scale.to(weight.dtype)): rounded to float32's 24
  // significant bits, then bfloat16's 8 or float16's 11, to nearest even.
  auto round_to_bits = [](double x, int bits) {
    int e = 0;
    const double m = std::frexp(x, &e);
    return std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits);
  };
  c->embed_scale = round_to_bits(std::sqrt(static_cast<double>(c->hidden_size)), 24);
  if (c->torch_dtype == "bfloat16") c->embed_scale = round_to_bits(c->embed_scale, 8);
  if (c->torch_dtype == "float16") c->embed_scale = round_to_bits(c->embed_scale, 11);
  return absl::OkStatus();
}

// The mixture-of-experts keys of Mixtral / Qwen2-MoE / Qwen3-MoE.
absl::Status ParseMoe(const json& j, ModelConfig* c) {
  MoeConfig& m = c->moe;
  const bool mixtral = c->model_type == "mixtral";
  m.block = mixtral ? "block_sparse_moe" : "mlp";
  m.mixtral_names = mixtral;
  // Each config class's defaults where a key is absent.
  m.num_experts = mixtral ? 8 : c->model_type == "qwen2_moe" ? 60 : 128;
  m.top_k = mixtral ? 2 : c->model_type == "qwen2_moe" ? 4 : 8;
  // Released Qwen3-MoE configs say num_experts; Transformers 5 saves num_local_experts.
  QAAS_RETURN_IF_ERROR(GetInt(j, mixtral ? "num_local_experts" : "num_experts", false, m.num_experts));
  if (c->model_type == "qwen3_moe") QAAS_RETURN_IF_ERROR(GetInt(j, "num_local_experts", false, m.num_experts));
  QAAS_RETURN_IF_ERROR(GetInt(j, "num_experts_per_tok", false, m.top_k));
  if (m.top_k > m.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: num_experts_per_tok ", m.top_k, " exceeds the ",
                                                   m.num_experts, " experts"));
  }
  if (mixtral) {
    m.expert_intermediate_size = c->intermediate_size;
    m.norm_topk_prob = true;  // Mixtral always renormalizes the top k
    return absl::OkStatus();
  }
  m.expert_intermediate_size = c->model_type == "qwen2_moe" ? 1408 : 768;
  QAAS_RETURN_IF_ERROR(GetInt(j, "moe_intermediate_size", false, m.expert_intermediate_size));
  QAAS_RETURN_IF_ERROR(GetBool(j, "norm_topk_prob", m.norm_topk_prob));
  if (c->model_type == "qwen2_moe") {
    m.shared_expert_intermediate_size = 5632;
    QAAS_RETURN_IF_ERROR(GetInt(j, "shared_expert_intermediate_size", false, m.shared_expert_intermediate_size));
  }
  // Dense layers among the sparse ones are not run yet.
  int step = 1;
  QAAS_RETURN_IF_ERROR(GetInt(j, "decoder_sparse_step", false, step));
  if (step != 1) {
    return absl::UnimplementedError(absl::StrCat("config.json: 'decoder_sparse_step' = ", step,
                                                 " (dense layers between the MoE layers) is not supported (only 1)"));
  }
  if (j.contains("mlp_only_layers") && !j["mlp_only_layers"].is_null() &&
      !(j["mlp_only_layers"].is_array() && j["mlp_only_layers"].empty())) {
    return absl::UnimplementedError(absl::StrCat("config.json: 'mlp_only_layers' = ", j["mlp_only_layers"].dump(),
                                                 " (dense layers among the MoE layers) is not supported (only [])"));
  }
  return absl::OkStatus();
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
  static const std::set<std::string> kLlamaLike = {"llama", "mistral",   "qwen2",   "qwen3",    "gemma2",
                                                   "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"};
  if (!kLlamaLike.count(c.model_type)) {
    std::string hint;
    if (c.model_type == "gemma3") hint = " (the multimodal Gemma 3; its text model, model_type gemma3_text, is)";
    if (c.model_type.rfind("deepseek_v", 0) == 0) {
      hint = " (DeepSeek-V2/V3: multi-head latent attention and grouped sigmoid routing are not implemented)";
    }
    return absl::UnimplementedError(absl::StrCat("config.json: model_type '", c.model_type,
                                                 "' is not supported (llama, mistral, qwen2, qwen3, gemma2, "
                                                 "gemma3_text, phi3, mixtral, qwen2_moe, qwen3_moe, opt)",
                                                 hint));
  }
  QAAS_RETURN_IF_ERROR(CheckKeys(j, c.model_type));
  c.architecture = "llama";
  const bool gemma = c.model_type == "gemma2" || c.model_type == "gemma3_text";
  // transformers 5 writes "dtype", earlier versions "torch_dtype" (preferred when both are there).
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (j.contains(key) && j[key].is_string()) c.torch_dtype = j[key].get<std::string>();
  }
  if (gemma) c.head_dim = 256;  // the configs' default
  if (c.model_type == "phi3" || c.model_type == "mixtral") c.rms_norm_eps = 1e-5;  // their configs' default
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
  QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "rms_norm_eps", c.rms_norm_eps));
  QAAS_RETURN_IF_ERROR(PositiveNumber(j, "", "rope_theta", c.rope_theta));
  QAAS_RETURN_IF_ERROR(ParseRope(j, &c));
  c.tie_word_embeddings = gemma;  // Gemma ties by default, the others do not
  QAAS_RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", c.tie_word_embeddings));
  // Per family: which linears carry biases, q/k norms.
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // q/k/v; o_proj has none
  } else if (c.model_type == "qwen2_moe") {
    c.attention_bias = true;  // q/k/v unless qkv_bias says otherwise; o_proj has none
    QAAS_RETURN_IF_ERROR(GetBool(j, "qkv_bias", c.attention_bias));
  } else if (c.model_type != "phi3" && c.model_type != "mistral" && c.model_type != "mixtral") {
    QAAS_RETURN_IF_ERROR(GetBool(j, "attention_bias", c.attention_bias));
    c.attention_out_bias = c.attention_bias;
  }
  QAAS_RETURN_IF_ERROR(GetBool(j, "mlp_bias", c.mlp_bias));
  c.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_moe";
  if (c.model_type == "mixtral" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") {
    QAAS_RETURN_IF_ERROR(ParseMoe(j, &c));
  }
  c.fused_qkv = c.fused_gate_up = c.model_type == "phi3";
  QAAS_RETURN_IF_ERROR(ParseSlidingWindow(j, &c));
  if (gemma) {
    QAAS_RETURN_IF_ERROR(ParseGemma(j, &c));  // Gemma's MLP reads hidden_activation, not hidden_act
  } else if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: hidden_act ", j["hidden_act"].dump(), " is not supported (silu)"));
  }
  if (c.attention_scale == 0) c.attention_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int>();
  }
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) {
    c.eos_token_id = j["eos_token_id"].get<int>();
  }
  return c;
}

std::vector<int64_t> LinearInputWidths(const ModelConfig& c) {
  const MoeConfig& moe = c.moe;
  std::vector<int64_t> widths;
  for (int w : {c.hidden_size, c.num_heads * c.head_dim, moe.num_experts > 0 ? 0 : c.intermediate_size,
                moe.expert_intermediate_size, moe.shared_expert_intermediate_size}) {
    if (w > 0) widths.push_back(w);
  }
  return widths;
}

}  // namespace qaas::quant
