#include "quant/model/config.h"

#include <string>

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
  scaled["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  c = ParseModelConfig(scaled.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "rope_scaling"));

  json null_scaling = MinimalConfig();
  null_scaling["rope_scaling"] = nullptr;  // what HF writes when there is none
  QAAS_EXPECT_OK(ParseModelConfig(null_scaling.dump()));

  json gelu = MinimalConfig();
  gelu["hidden_act"] = "gelu";
  c = ParseModelConfig(gelu.dump());
  QAAS_EXPECT_CODE(c, kUnimplemented);
  EXPECT_TRUE(MessageHas(c, "gelu"));
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
