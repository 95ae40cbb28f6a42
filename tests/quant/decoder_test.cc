#include "quant/model/decoder.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "quant/model/checkpoint.h"
#include "quant/model/llama.h"
#include "quant/model/opt.h"
#include "quant/model/random_model.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ScopedTempDir;

at::Tensor Ids(int64_t batch, int64_t seq, int64_t vocab) {
  return at::arange(batch * seq, at::TensorOptions().dtype(at::kLong)).remainder(vocab).view({batch, seq});
}

void ExpectGroups(const DecoderModel& m, const std::vector<std::pair<std::string, std::vector<int>>>& want) {
  ASSERT_EQ(m.SequentialGroups().size(), want.size());
  for (size_t g = 0; g < want.size(); ++g) {
    EXPECT_EQ(m.SequentialGroups()[g].name, want[g].first);
    EXPECT_EQ(m.SequentialGroups()[g].linears, want[g].second);
  }
}

// The adapter runs exactly the architecture's own forward.
TEST(DecoderModelTest, OptIsTheOptForward) {
  auto ck = Checkpoint::Open(TinyOptDir());
  QAAS_ASSERT_OK(ck);
  auto model = DecoderModel::Create(**ck, at::kCPU, 128);
  QAAS_ASSERT_OK(model);
  const DecoderModel& m = **model;
  EXPECT_EQ(m.LinearNames(), OptLinearNames());
  ExpectGroups(m, {{"qkv", {0, 1, 2}}, {"out", {3}}, {"fc1", {4}}, {"fc2", {5}}});
  EXPECT_TRUE(m.Fusions().empty());
  EXPECT_EQ(m.DecidingBlock(1), AdaDimBlock::kAttention);
  EXPECT_EQ(m.DecidingBlock(3), AdaDimBlock::kOwnOutput);
  EXPECT_EQ(m.DecidingBlock(4), AdaDimBlock::kMlp);
  EXPECT_EQ(m.DecidingBlock(5), AdaDimBlock::kOwnOutput);
  EXPECT_EQ(m.LayerPrefix(1), "model.decoder.layers.1.");
  EXPECT_EQ(m.HeadTensorNames(),
            (std::vector<std::string>{"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                                      "model.decoder.final_layer_norm.weight",
                                      "model.decoder.final_layer_norm.bias"}));

  auto head = LoadOptHead(**ck);
  QAAS_ASSERT_OK(head);
  auto opt_layer = LoadOptLayer(**ck, 1);
  QAAS_ASSERT_OK(opt_layer);
  auto layer = m.LoadLayer(1);
  QAAS_ASSERT_OK(layer);
  ASSERT_EQ(layer->norms.size(), 4u);
  EXPECT_TRUE(layer->norm("final_layer_norm.bias").equal(opt_layer->final_layer_norm.bias));
  EXPECT_FALSE(layer->norm("input_layernorm.weight").defined());

  const at::Tensor ids = Ids(2, 16, 400);
  const at::Tensor x = m.Embed(ids);
  EXPECT_TRUE(x.equal(OptEmbed(*head, ids)));
  const ModelConfig& c = (*ck)->config();
  EXPECT_TRUE(m.LayerForward(*layer, x).equal(OptLayerForward(*opt_layer, c, x)));
  EXPECT_TRUE(m.AttentionForward(*layer, x).equal(OptAttentionForward(*opt_layer, c, x)));
  EXPECT_TRUE(m.MlpForward(*layer, x).equal(OptMlpForward(*opt_layer, c, x)));
  EXPECT_TRUE(m.Logits(x).equal(OptLogits(*head, c, x)));
}

TEST(DecoderModelTest, LlamaIsTheLlamaForward) {
  ScopedTempDir dir;
  RandomModelOptions o;
  o.tokenizer_text = kTinyText;
  o.tie_word_embeddings = false;
  QAAS_ASSERT_OK(WriteRandomLlama(o, dir.path()));
  auto ck = Checkpoint::Open(dir.path());
  QAAS_ASSERT_OK(ck);
  auto model = DecoderModel::Create(**ck, at::kCPU, 32);
  QAAS_ASSERT_OK(model);
  const DecoderModel& m = **model;
  EXPECT_EQ(m.LinearNames(), LlamaLinearNames());
  ExpectGroups(m, {{"qkv", {0, 1, 2}}, {"o", {3}}, {"gate_up", {4, 5}}, {"down", {6}}});
  EXPECT_TRUE(m.Fusions().empty());
  EXPECT_EQ(m.DecidingBlock(5), AdaDimBlock::kMlp);
  EXPECT_EQ(m.DecidingBlock(6), AdaDimBlock::kOwnOutput);
  EXPECT_EQ(m.LayerPrefix(0), "model.layers.0.");
  EXPECT_EQ(m.HeadTensorNames(),
            (std::vector<std::string>{"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}));

  auto head = LoadLlamaHead(**ck);
  QAAS_ASSERT_OK(head);
  auto llama_layer = LoadLlamaLayer(**ck, 0);
  QAAS_ASSERT_OK(llama_layer);
  auto layer = m.LoadLayer(0);
  QAAS_ASSERT_OK(layer);
  EXPECT_TRUE(layer->norm("post_attention_layernorm.weight").equal(llama_layer->post_norm));
  const ModelConfig& c = (*ck)->config();
  const Rope rope(c, 32, at::kCPU);
  const at::Tensor x = m.Embed(Ids(2, 32, 512));
  EXPECT_TRUE(x.equal(at::embedding(head->embed, Ids(2, 32, 512))));
  EXPECT_TRUE(m.LayerForward(*layer, x).equal(LlamaLayerForward(*llama_layer, c, rope, x)));
  EXPECT_TRUE(m.Logits(x).equal(at::matmul(RmsNorm(x, head->final_norm, c.rms_norm_eps), head->lm_head.t())));
}

}  // namespace
}  // namespace qaas::quant
