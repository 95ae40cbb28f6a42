#include "quant/model/config.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using nlohmann::json;

json MinimalConfig() {
  return {{"model_type", "llama"},       {"hidden_size", 64},  {"intermediate_size", 172},
          {"num_hidden_layers", 2},      {"num_attention_heads", 8},
          {"vocab_size", 512},           {"max_position_embeddings", 256}};
}

TEST(ModelConfigTest, ParsesStories260k) {
  QAAS_REQUIRE_SHARED();
  const std::string text = ::qaas::testing::ReadLocalFile(Stories260kDir() + "/config.json");
  auto c = ParseModelConfig(text);
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 172);
  EXPECT_EQ(c->num_layers, 5);
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_id, 2);
  EXPECT_EQ(c->torch_dtype, "float32");
  EXPECT_EQ(c->raw_json, text);
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  auto c = ParseModelConfig(MinimalConfig().dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->num_kv_heads, 8);  // defaults to num_attention_heads
  EXPECT_EQ(c->head_dim, 8);      // hidden_size / num_attention_heads
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_FALSE(c->tie_word_embeddings);

  json explicit_head_dim = MinimalConfig();
  explicit_head_dim["head_dim"] = 16;
  explicit_head_dim["num_attention_heads"] = 6;  // 6 * 16 != 64 is fine with an explicit head_dim
  c = ParseModelConfig(explicit_head_dim.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->head_dim, 16);

  json mistral = MinimalConfig();
  mistral["model_type"] = "mistral";
  QAAS_EXPECT_OK(ParseModelConfig(mistral.dump()));
}

TEST(ModelConfigTest, MissingRequiredFieldIsInvalidArgumentNamingIt) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "vocab_size", "max_position_embeddings"}) {
    SCOPED_TRACE(field);
    json j = MinimalConfig();
    j.erase(field);
    auto c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kInvalidArgument);
    EXPECT_TRUE(MessageHas(c, field));
  }
  json no_type = MinimalConfig();
  no_type.erase("model_type");
  auto c = ParseModelConfig(no_type.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "model_type"));
}

TEST(ModelConfigTest, BadValuesAreInvalidArgumentNamingTheField) {
  struct Bad {
    const char* field;
    json value;
  };
  for (const Bad& b : {Bad{"hidden_size", -64}, Bad{"hidden_size", "64"}, Bad{"vocab_size", 0},
                       Bad{"num_hidden_layers", 2.5}, Bad{"rms_norm_eps", -1.0},
                       Bad{"tie_word_embeddings", "yes"}}) {
    SCOPED_TRACE(b.field);
    json j = MinimalConfig();
    j[b.field] = b.value;
    auto c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kInvalidArgument);
    EXPECT_TRUE(MessageHas(c, b.field));
  }
}

TEST(ModelConfigTest, HeadsThatDoNotDivideAreInvalidArgument) {
  json j = MinimalConfig();
  j["num_attention_heads"] = 6;  // 64 % 6 != 0
  auto c = ParseModelConfig(j.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "num_attention_heads"));

  j = MinimalConfig();
  j["num_key_value_heads"] = 3;  // 8 % 3 != 0
  c = ParseModelConfig(j.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "num_key_value_heads"));

  j = MinimalConfig();
  j["num_attention_heads"] = 64;  // head_dim 1 is odd: rotary embeddings need pairs
  c = ParseModelConfig(j.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "head_dim"));
}

TEST(ModelConfigTest, UnsupportedModelsAndFeaturesAreUnimplemented) {
  json gpt2 = MinimalConfig();
  gpt2["model_type"] = "gpt2";
  auto c = ParseModelConfig(gpt2.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "gpt2"));

  json scaled = MinimalConfig();
  scaled["rope_scaling"] = {{"type", "mrope"}, {"factor", 2.0}};
  c = ParseModelConfig(scaled.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "rope_scaling"));
  EXPECT_TRUE(MessageHas(c, "mrope"));

  json null_scaling = MinimalConfig();
  null_scaling["rope_scaling"] = nullptr;  // what HF writes when there is none
  QAAS_EXPECT_OK(ParseModelConfig(null_scaling.dump()));

  json gelu = MinimalConfig();
  gelu["hidden_act"] = "gelu";
  c = ParseModelConfig(gelu.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "gelu"));
}

// Every key that changes the computation is read or refused, naming it;
// keys known not to matter pass (each was silently ignored once).
TEST(ModelConfigTest, UnknownOrUnimplementedKeysAreRefusedNamingThem) {
  struct Case {
    const char* model_type;
    const char* key;
    json value;
  };
  for (const Case& k : {Case{"llama", "attn_logit_softcapping", 50.0}, Case{"llama", "partial_rotary_factor", 0.5},
                        Case{"qwen2", "use_mrope", true}, Case{"llama", "pretraining_tp", 2},
                        Case{"llama", "quantization_config", json{{"quant_method", "gptq"}}},
                        Case{"mistral", "some_future_switch", true}, Case{"llama", "sliding_window", 8},
                        Case{"qwen3", "rope_scaling", json{{"rope_type", "yarn"}, {"factor", 4.0}, {"mrope_section", {1}}}}}) {
    SCOPED_TRACE(k.key);
    json j = MinimalConfig();
    j["model_type"] = k.model_type;
    j[k.key] = k.value;
    auto c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kUnimplemented);
    EXPECT_TRUE(MessageHas(c, k.key == std::string("rope_scaling") ? "mrope_section" : k.key));
  }
  json harmless = MinimalConfig();
  for (const char* key : {"architectures", "initializer_range", "use_cache", "attention_dropout", "transformers_version"}) {
    harmless[key] = json::array();
  }
  harmless["pretraining_tp"] = 1;
  harmless["eos_token_id"] = {128001, 128009};
  QAAS_EXPECT_OK(ParseModelConfig(harmless.dump()));
}

TEST(ModelConfigTest, FamiliesReadTheirFeatures) {
  json llama3 = MinimalConfig();
  llama3["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  llama3["tie_word_embeddings"] = true;
  auto c = ParseModelConfig(llama3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_TRUE(c->layer_window.empty());

  json mistral = MinimalConfig();
  mistral["model_type"] = "mistral";
  mistral["sliding_window"] = 16;
  c = ParseModelConfig(mistral.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->layer_window, (std::vector<int>{16, 16}));
  mistral["sliding_window"] = nullptr;
  c = ParseModelConfig(mistral.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->WindowOf(0), 0);

  json qwen2 = MinimalConfig();
  qwen2["model_type"] = "qwen2";
  qwen2["num_hidden_layers"] = 3;
  qwen2["sliding_window"] = 16;
  qwen2["max_window_layers"] = 1;
  qwen2["use_sliding_window"] = false;
  c = ParseModelConfig(qwen2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->layer_window, (std::vector<int>{0, 0, 0}));
  EXPECT_TRUE(c->attention_bias);
  EXPECT_FALSE(c->attention_out_bias);
  qwen2["use_sliding_window"] = true;
  c = ParseModelConfig(qwen2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->layer_window, (std::vector<int>{0, 16, 16}));
  qwen2["layer_types"] = {"sliding_attention", "full_attention", "sliding_attention"};
  c = ParseModelConfig(qwen2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->layer_window, (std::vector<int>{16, 0, 16}));

  json qwen3 = MinimalConfig();
  qwen3["model_type"] = "qwen3";
  qwen3["head_dim"] = 16;
  qwen3["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 1e6},
                              {"original_max_position_embeddings", 32}};
  c = ParseModelConfig(qwen3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rope_scaling.type, "yarn");

  json bad = MinimalConfig();
  bad["rope_scaling"] = {{"rope_type", "linear"}};
  QAAS_EXPECT_CODE(ParseModelConfig(bad.dump()), kInvalidArgument);  // no factor
  bad["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", {1.0}}, {"long_factor", {1.0}}};
  c = ParseModelConfig(bad.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);  // head_dim 8 needs 4 factors
  EXPECT_TRUE(MessageHas(c, "short_factor"));
}

// Gemma 2 / Gemma 3 / Phi-3: their configs' defaults where a key is absent,
// both spellings of Gemma 3's two RoPEs, Phi-3's RoPE names.
TEST(ModelConfigTest, GemmaAndPhiReadTheirFeaturesAndDefaults) {
  json gemma2 = MinimalConfig();
  gemma2["model_type"] = "gemma2";
  gemma2["num_hidden_layers"] = 4;
  auto c = ParseModelConfig(gemma2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->head_dim, 256);  // Gemma2Config's defaults
  EXPECT_DOUBLE_EQ(c->attn_logit_softcap, 50.0);
  EXPECT_DOUBLE_EQ(c->final_logit_softcap, 30.0);
  EXPECT_DOUBLE_EQ(c->attention_scale, 1.0 / 16);  // query_pre_attn_scalar 256
  EXPECT_EQ(c->layer_window, (std::vector<int>{4096, 0, 4096, 0}));
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->sandwich_norms);
  EXPECT_DOUBLE_EQ(c->norm_weight_offset, 1.0);
  EXPECT_EQ(c->activation, "gelu_pytorch_tanh");
  EXPECT_FALSE(c->qk_norm);
  EXPECT_DOUBLE_EQ(c->embed_scale, 8.0);  // sqrt(64)
  gemma2["attn_logit_softcapping"] = nullptr;
  gemma2["final_logit_softcapping"] = nullptr;
  gemma2["query_pre_attn_scalar"] = 144;
  gemma2["hidden_size"] = 3072;
  gemma2["dtype"] = "bfloat16";
  c = ParseModelConfig(gemma2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->attn_logit_softcap, 0.0);
  EXPECT_EQ(c->final_logit_softcap, 0.0);
  EXPECT_DOUBLE_EQ(c->attention_scale, 1.0 / 12);
  EXPECT_DOUBLE_EQ(c->embed_scale, 55.5);  // sqrt(3072) = 55.43 in bfloat16, as Transformers multiplies
  gemma2["dtype"] = "float32";
  c = ParseModelConfig(gemma2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_DOUBLE_EQ(c->embed_scale, static_cast<float>(std::sqrt(3072.0)));

  // Gemma 3 as its released configs spell it, and as Transformers 5 saves it.
  json gemma3 = MinimalConfig();
  gemma3["model_type"] = "gemma3_text";
  gemma3["num_hidden_layers"] = 7;
  gemma3["head_dim"] = 16;
  gemma3["rope_theta"] = 1e6;
  gemma3["rope_local_base_freq"] = 1e4;
  gemma3["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  gemma3["sliding_window"] = 512;
  gemma3["sliding_window_pattern"] = 6;
  c = ParseModelConfig(gemma3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_TRUE(c->local_rope);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c->local_rope_theta, 1e4);
  EXPECT_EQ(c->local_rope_scaling.type, "default");
  EXPECT_EQ(c->layer_window, (std::vector<int>{512, 512, 512, 512, 512, 0, 512}));
  EXPECT_EQ(c->attn_logit_softcap, 0.0);  // Gemma 3 has none
  json saved = gemma3;
  for (const char* key : {"rope_theta", "rope_local_base_freq", "rope_scaling", "sliding_window_pattern"}) {
    saved.erase(key);
  }
  saved["rope_parameters"] = {{"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 1e6}}},
                              {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1e4}}}};
  saved["_sliding_window_pattern"] = 6;
  saved["layer_types"] = {"sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention",
                          "sliding_attention", "full_attention", "sliding_attention"};
  auto same = ParseModelConfig(saved.dump());
  QAAS_ASSERT_OK(same);
  EXPECT_DOUBLE_EQ(same->rope_theta, c->rope_theta);
  EXPECT_DOUBLE_EQ(same->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(same->local_rope_theta, c->local_rope_theta);
  EXPECT_EQ(same->layer_window, c->layer_window);

  // Phi-3: "su" is LongRoPE; the partial rotary factor sizes its factor lists.
  json phi3 = MinimalConfig();
  phi3["model_type"] = "phi3";
  phi3["original_max_position_embeddings"] = 64;
  phi3["partial_rotary_factor"] = 0.75;  // head_dim 8 -> 6 channels, 3 factors
  phi3["rope_scaling"] = {{"type", "su"}, {"short_factor", {1.0, 1.0, 1.0}}, {"long_factor", {2.0, 3.0, 4.0}}};
  phi3["sliding_window"] = 32;
  c = ParseModelConfig(phi3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->rope_scaling.type, "longrope");
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 64);
  EXPECT_EQ(c->rotary_dim, 6);
  EXPECT_EQ(c->layer_window, (std::vector<int>{32, 32}));
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);  // Phi3Config's default
  EXPECT_TRUE(c->fused_qkv);
  EXPECT_TRUE(c->fused_gate_up);
  EXPECT_FALSE(c->tie_word_embeddings);
  phi3["rope_scaling"]["short_factor"] = {1.0, 1.0, 1.0, 1.0};  // sized for the whole head
  c = ParseModelConfig(phi3.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "rotary_dim / 2 = 3"));
}

// Configs with the keys the released checkpoints carry (gemma-2-9b,
// gemma-3-1b-it, Phi-3.5-mini-instruct, Phi-4-mini-instruct; long factor
// lists shortened with the head) parse, with their features read.
TEST(ModelConfigTest, ReleasedGemmaAndPhiConfigsParse) {
  json gemma2 = json::parse(R"({"architectures": ["Gemma2ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "gemma2",
    "num_attention_heads": 16, "num_hidden_layers": 42, "num_key_value_heads": 8, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
    "sliding_window_size": 4096, "torch_dtype": "float32", "transformers_version": "4.42.0.dev0",
    "use_cache": true, "vocab_size": 256000})");
  auto c = ParseModelConfig(gemma2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->WindowOf(0), 4096);
  EXPECT_EQ(c->WindowOf(1), 0);
  json gemma3 = json::parse(R"({"architectures": ["Gemma3ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2, "cache_implementation": "hybrid",
    "eos_token_id": [1, 106], "final_logit_softcapping": null, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
    "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0", "use_cache": true, "vocab_size": 262144})");
  c = ParseModelConfig(gemma3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->WindowOf(5), 0);
  EXPECT_EQ(c->WindowOf(6), 512);
  EXPECT_DOUBLE_EQ(c->embed_scale, 34.0);  // sqrt(1152) = 33.94 in bfloat16
  json phi35 = json::parse(R"({"architectures": ["Phi3ForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu",
    "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
    "model_type": "phi3", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "original_max_position_embeddings": 4096, "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.3", "use_cache": true, "vocab_size": 32064})");
  phi35["rope_scaling"] = {{"type", "longrope"}, {"long_factor", std::vector<double>(48, 1.5)},
                           {"short_factor", std::vector<double>(48, 1.0)}};
  c = ParseModelConfig(phi35.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->rope_scaling.type, "longrope");
  EXPECT_EQ(c->rotary_dim, 96);
  json phi4mini = phi35;
  phi4mini["partial_rotary_factor"] = 0.75;
  phi4mini["hidden_size"] = 3072;
  phi4mini["num_attention_heads"] = 24;
  phi4mini["num_key_value_heads"] = 8;
  phi4mini["tie_word_embeddings"] = true;
  phi4mini["lm_head_bias"] = false;
  phi4mini["mlp_bias"] = false;
  phi4mini["full_attn_mod"] = 1;
  phi4mini["interpolate_factor"] = 1;
  phi4mini["sliding_window"] = 262144;
  phi4mini["rope_scaling"] = {{"type", "longrope"}, {"long_factor", std::vector<double>(48, 1.5)},
                              {"short_factor", std::vector<double>(48, 1.0)}};
  c = ParseModelConfig(phi4mini.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rotary_dim, 96);
}

// Each computation-changing setting of these families that qaas does not run
// is refused naming it.
TEST(ModelConfigTest, GemmaAndPhiRefuseWhatTheyDoNotRun) {
  struct Case {
    const char* model_type;
    const char* key;
    json value;
    const char* named;
  };
  for (const Case& k :
       {Case{"gemma3_text", "use_bidirectional_attention", true, "use_bidirectional_attention"},
        Case{"gemma2", "hidden_activation", "gelu", "hidden_activation"},
        Case{"gemma2", "rope_parameters", json{{"sliding_attention", {{"rope_type", "default"}}}}, "sliding_attention"},
        Case{"gemma3_text", "rope_parameters", json{{"chunked_attention", {{"rope_type", "default"}}}},
             "chunked_attention"},
        Case{"phi3", "attention_bias", true, "attention_bias"},
        Case{"phi3", "lm_head_bias", true, "lm_head_bias"},
        Case{"phi3", "hidden_act", "gelu", "gelu"},
        Case{"gemma2", "layer_types", json{"sliding_attention", "chunked_attention"}, "chunked_attention"},
        Case{"mistral", "partial_rotary_factor", 0.5, "partial_rotary_factor"}}) {
    SCOPED_TRACE(std::string(k.model_type) + " " + k.key);
    json j = MinimalConfig();
    j["model_type"] = k.model_type;
    j[k.key] = k.value;
    auto c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kUnimplemented);
    EXPECT_TRUE(MessageHas(c, k.named));
  }
  json multimodal = MinimalConfig();
  multimodal["model_type"] = "gemma3";
  auto c = ParseModelConfig(multimodal.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "gemma3_text"));
}

// Mixtral / Qwen2-MoE / Qwen3-MoE: experts, top k, renormalization, the
// shared expert, their configs' defaults; what is not run is refused by name.
TEST(ModelConfigTest, MixturesOfExpertsReadTheirRouting) {
  json mixtral = MinimalConfig();
  mixtral["model_type"] = "mixtral";
  mixtral["router_jitter_noise"] = 0.0;
  mixtral["output_router_logits"] = false;
  auto c = ParseModelConfig(mixtral.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->moe.num_experts, 8);  // MixtralConfig's defaults
  EXPECT_EQ(c->moe.top_k, 2);
  EXPECT_TRUE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.expert_intermediate_size, 172);
  EXPECT_EQ(c->moe.block, "block_sparse_moe");
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);

  json qwen2 = MinimalConfig();
  qwen2["model_type"] = "qwen2_moe";
  qwen2["num_experts"] = 60;
  qwen2["num_experts_per_tok"] = 4;
  qwen2["moe_intermediate_size"] = 32;
  qwen2["shared_expert_intermediate_size"] = 96;
  qwen2["sliding_window"] = 0;  // what Transformers saves without use_sliding_window
  c = ParseModelConfig(qwen2.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_FALSE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.shared_expert_intermediate_size, 96);
  EXPECT_TRUE(c->attention_bias);  // qkv_bias defaults on
  EXPECT_FALSE(c->attention_out_bias);
  EXPECT_TRUE(c->layer_window.empty() || c->WindowOf(0) == 0);

  json qwen3 = MinimalConfig();
  qwen3["model_type"] = "qwen3_moe";
  qwen3["num_local_experts"] = 16;  // as Transformers 5 saves num_experts
  qwen3["num_experts_per_tok"] = 4;
  qwen3["norm_topk_prob"] = true;
  c = ParseModelConfig(qwen3.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->moe.num_experts, 16);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->moe.shared_expert_intermediate_size, 0);

  struct Case {
    const char* model_type;
    const char* key;
    json value;
    const char* named;
  };
  for (const Case& k : {Case{"qwen3_moe", "decoder_sparse_step", 2, "decoder_sparse_step"},
                        Case{"qwen2_moe", "mlp_only_layers", json::array({0}), "mlp_only_layers"},
                        Case{"deepseek_v3", "q_lora_rank", 1536, "latent attention"},
                        Case{"mixtral", "num_local_experts_groups", 2, "num_local_experts_groups"}}) {
    SCOPED_TRACE(k.key);
    json j = MinimalConfig();
    j["model_type"] = k.model_type;
    j[k.key] = k.value;
    auto r = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(r, kUnimplemented);
    EXPECT_TRUE(MessageHas(r, k.named));
  }
  mixtral["num_experts_per_tok"] = 9;
  auto r = ParseModelConfig(mixtral.dump());
  QAAS_EXPECT_CODE(r, kInvalidArgument);
  EXPECT_TRUE(MessageHas(r, "num_experts_per_tok"));
}

TEST(ModelConfigTest, NotAnObjectIsInvalidArgument) {
  QAAS_EXPECT_CODE(ParseModelConfig("not json"), kInvalidArgument);
  QAAS_EXPECT_CODE(ParseModelConfig("[1, 2]"), kInvalidArgument);
  QAAS_EXPECT_CODE(ParseModelConfig(""), kInvalidArgument);
}

json MinimalOptConfig() {
  return {{"model_type", "opt"},           {"hidden_size", 64},        {"ffn_dim", 128},
          {"num_hidden_layers", 2},        {"num_attention_heads", 4}, {"vocab_size", 400},
          {"max_position_embeddings", 128}};
}

TEST(ModelConfigTest, ParsesOptWithOptConfigDefaults) {
  auto c = ParseModelConfig(MinimalOptConfig().dump());
  QAAS_ASSERT_OK(c);
  EXPECT_EQ(c->model_type, "opt");
  EXPECT_EQ(c->architecture, "opt");
  EXPECT_EQ(c->intermediate_size, 128);  // from ffn_dim
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->word_embed_proj_dim, 64);
  EXPECT_TRUE(c->do_layer_norm_before);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->mlp_bias);
  EXPECT_TRUE(c->layer_norm_elementwise_affine);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->activation, "relu");
  EXPECT_EQ(c->bos_token_id, 2);
  EXPECT_EQ(c->eos_token_id, 2);

  json j = MinimalOptConfig();
  j["enable_bias"] = false;
  j["layer_norm_elementwise_affine"] = false;
  j["word_embed_proj_dim"] = 64;
  j["dtype"] = "float16";
  c = ParseModelConfig(j.dump());
  QAAS_ASSERT_OK(c);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_FALSE(c->layer_norm_elementwise_affine);
  EXPECT_EQ(c->torch_dtype, "float16");

  auto llama = ParseModelConfig(MinimalConfig().dump());
  QAAS_ASSERT_OK(llama);
  EXPECT_EQ(llama->architecture, "llama");
}

TEST(ModelConfigTest, OptFieldsAreValidated) {
  for (const char* field : {"ffn_dim", "hidden_size", "num_hidden_layers", "num_attention_heads",
                            "vocab_size", "max_position_embeddings"}) {
    SCOPED_TRACE(field);
    json j = MinimalOptConfig();
    j.erase(field);
    auto c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kInvalidArgument);
    EXPECT_TRUE(MessageHas(c, field));
  }
  json j = MinimalOptConfig();
  j["enable_bias"] = "yes";
  auto c = ParseModelConfig(j.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "enable_bias"));

  j = MinimalOptConfig();
  j["num_attention_heads"] = 5;
  c = ParseModelConfig(j.dump());
  QAAS_EXPECT_CODE(c, kInvalidArgument);
  EXPECT_TRUE(MessageHas(c, "num_attention_heads"));

  struct Unsupported {
    const char* field;
    json value;
  };
  for (const auto& u :
       {Unsupported{"do_layer_norm_before", false}, Unsupported{"word_embed_proj_dim", 512},
        Unsupported{"activation_function", "gelu"},
        Unsupported{"_remove_final_layer_norm", true}}) {
    SCOPED_TRACE(u.field);
    j = MinimalOptConfig();
    j[u.field] = u.value;
    c = ParseModelConfig(j.dump());
    QAAS_EXPECT_CODE(c, kUnimplemented);
    EXPECT_TRUE(MessageHas(c, u.field));
  }
}

}  // namespace
}  // namespace qaas::quant
