#include "quant/model/llama.h"

#include <ATen/ATen.h>

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/checkpoint.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;

const nlohmann::json& Reference() {
  static const nlohmann::json* j =
      new nlohmann::json(nlohmann::json::parse(ReadLocalFile(ReferencePath("stories260k_reference.json"))));
  return *j;
}

struct Model {
  std::unique_ptr<Checkpoint> ck;
  LlamaHead head;
  std::vector<LlamaLayer> layers;
};

void LoadModel(const std::string& dir, Model* m) {
  auto ck = Checkpoint::Open(dir);
  QAAS_ASSERT_OK(ck);
  m->ck = *std::move(ck);
  auto head = LoadLlamaHead(*m->ck);
  QAAS_ASSERT_OK(head);
  m->head = *std::move(head);
  for (int i = 0; i < m->ck->config().num_layers; ++i) {
    auto layer = LoadLlamaLayer(*m->ck, i);
    QAAS_ASSERT_OK(layer);
    m->layers.push_back(*std::move(layer));
  }
}

// Logits [batch, seq, vocab] of int64 ids [batch, seq].
at::Tensor Logits(const Model& m, const at::Tensor& ids) {
  const ModelConfig& c = m.ck->config();
  Rope rope(c, ids.size(1), at::kCPU);
  at::Tensor h = at::embedding(m.head.embed, ids);
  for (const auto& layer : m.layers) h = LlamaLayerForward(layer, c, rope, h);
  return at::matmul(RmsNorm(h, m.head.final_norm, c.rms_norm_eps), m.head.lm_head.t());
}

at::Tensor ReferenceIds() {
  const auto ids = Reference()["logits"]["input_ids"].get<std::vector<int64_t>>();
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

TEST(LlamaTest, Stories260kLogitsMatchTheFloat64Reference) {
  QAAS_REQUIRE_SHARED();
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(Stories260kDir(), &m));
  ASSERT_EQ(m.layers.size(), 5u);
  const auto& ref = Reference()["logits"];
  at::Tensor ids = ReferenceIds();
  ASSERT_EQ(ids.size(1), 16);
  at::Tensor logits = Logits(m, ids)[0];
  ASSERT_EQ(logits.sizes().vec(), (std::vector<int64_t>{16, 512}));
  EXPECT_EQ(logits.scalar_type(), at::kFloat);

  const int positions = ref["positions"].get<int>();
  ASSERT_EQ(positions, 8);
  std::vector<double> flat;
  for (const auto& row : ref["values"]) {
    for (const auto& v : row) flat.push_back(v.get<double>());
  }
  at::Tensor want = at::tensor(flat, at::TensorOptions().dtype(at::kDouble)).reshape({positions, 512});
  at::Tensor got = logits.narrow(0, 0, positions).to(at::kDouble);
  const double max_diff = (got - want).abs().max().item<double>();
  EXPECT_LT(max_diff, 1e-4) << "float32 forward differs from transformers float64";
  // And the error is a float32 rounding error, not a near miss of a real bug.
  EXPECT_GT(want.abs().max().item<double>(), 1.0);

  const auto argmax = ref["argmax"].get<std::vector<int64_t>>();
  at::Tensor got_argmax = got.argmax(-1);
  for (int p = 0; p < positions; ++p) EXPECT_EQ(got_argmax[p].item<int64_t>(), argmax[p]) << p;
}

TEST(LlamaTest, LaterTokensDoNotChangeEarlierLogits) {
  QAAS_REQUIRE_SHARED();
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(Stories260kDir(), &m));
  at::Tensor ids = ReferenceIds();
  at::Tensor changed = ids.clone();
  changed.narrow(1, 4, 12).fill_(300);
  at::Tensor a = Logits(m, ids)[0];
  at::Tensor b = Logits(m, changed)[0];
  EXPECT_TRUE(at::allclose(a.narrow(0, 0, 4), b.narrow(0, 0, 4), 0, 1e-6))
      << "position 3 sees a later token";
  EXPECT_GT((a[4] - b[4]).abs().max().item<double>(), 1e-2) << "position 4 ignores its own token";
  EXPECT_GT((a[10] - b[10]).abs().max().item<double>(), 1e-2);
}

TEST(LlamaTest, BatchedWindowsAreIndependent) {
  QAAS_REQUIRE_SHARED();
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(Stories260kDir(), &m));
  at::Tensor ids = ReferenceIds();
  at::Tensor other = ids.flip({1});
  at::Tensor both = at::cat({ids, other}, 0);
  at::Tensor batched = Logits(m, both);
  at::Tensor single0 = Logits(m, ids)[0], single1 = Logits(m, other)[0];
  // Float32 rounding differs with the batch shape (~1e-5); a mix-up between
  // windows would differ by whole logits.
  EXPECT_LT((batched[0] - single0).abs().max().item<float>(), 1e-4);
  EXPECT_LT((batched[1] - single1).abs().max().item<float>(), 1e-4);
  EXPECT_GT((single0 - single1).abs().max().item<float>(), 1.0);
}

// A hand-made config and layer: no files needed.
ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.vocab_size = 64;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  return c;
}

LlamaLayer RandomLayer(const ModelConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t h = c.hidden_size, kv = int64_t{c.num_kv_heads} * c.head_dim, m = c.intermediate_size;
  LlamaLayer l;
  l.input_norm = at::rand({h}) + 0.5;
  l.post_norm = at::rand({h}) + 0.5;
  for (auto shape : std::vector<std::vector<int64_t>>{{h, h}, {kv, h}, {kv, h}, {h, h}, {m, h}, {m, h}, {h, m}}) {
    l.linears.push_back({at::randn(shape) * 0.1, at::Tensor()});
  }
  return l;
}

TEST(LlamaTest, HookSeesEveryLinearInputAsTwoDimensional) {
  const ModelConfig c = TinyConfig();
  const LlamaLayer layer = RandomLayer(c, 1);
  Rope rope(c, 16, at::kCPU);
  at::Tensor x = at::randn({2, 16, c.hidden_size});
  std::vector<std::string> names;
  std::vector<at::Tensor> inputs;
  at::Tensor with_hook = LlamaLayerForward(layer, c, rope, x, [&](const std::string& n, const at::Tensor& in) {
    names.push_back(n);
    inputs.push_back(in.clone());
  });
  EXPECT_EQ(names, LlamaLinearNames());
  ASSERT_EQ(inputs.size(), 7u);
  const std::vector<int64_t> widths = {32, 32, 32, 32, 32, 32, 48};
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(inputs[i].sizes().vec(), (std::vector<int64_t>{32, widths[i]})) << names[i];
  }
  EXPECT_TRUE(inputs[0].equal(inputs[1]));
  EXPECT_TRUE(inputs[0].equal(inputs[2]));
  EXPECT_TRUE(inputs[4].equal(inputs[5]));
  // q/k/v see the normalised input.
  EXPECT_TRUE(at::allclose(inputs[0], RmsNorm(x, layer.input_norm, c.rms_norm_eps).reshape({32, 32})));
  // The hook observes without changing the result.
  EXPECT_TRUE(with_hook.equal(LlamaLayerForward(layer, c, rope, x)));
  EXPECT_EQ(with_hook.sizes(), x.sizes());
}

TEST(LlamaTest, LayerWithZeroOutputProjectionsIsIdentity) {
  // The residual stream: with o_proj and down_proj zero the layer adds nothing.
  const ModelConfig c = TinyConfig();
  LlamaLayer layer = RandomLayer(c, 2);
  layer.linear("self_attn.o_proj").weight.zero_();
  layer.linear("mlp.down_proj").weight.zero_();
  Rope rope(c, 8, at::kCPU);
  at::Tensor x = at::randn({1, 8, c.hidden_size});
  EXPECT_TRUE(LlamaLayerForward(layer, c, rope, x).equal(x));
}

TEST(LlamaTest, RmsNormAndRopeFollowTheirFormulas) {
  at::Tensor x = at::tensor({3.0f, 4.0f}).reshape({1, 2});
  at::Tensor w = at::tensor({1.0f, 2.0f});
  // mean(x^2) = 12.5
  at::Tensor y = RmsNorm(x, w, 0.0);
  EXPECT_NEAR(y[0][0].item<double>(), 3.0 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y[0][1].item<double>(), 2 * 4.0 / std::sqrt(12.5), 1e-6);

  const ModelConfig c = TinyConfig();  // head_dim 8, theta 10000
  Rope rope(c, 10, at::kCPU);
  EXPECT_EQ(rope.cos.sizes().vec(), (std::vector<int64_t>{10, 8}));
  EXPECT_EQ(rope.causal_mask.sizes().vec(), (std::vector<int64_t>{10, 10}));
  EXPECT_TRUE(rope.cos[0].equal(at::ones({8})));
  EXPECT_TRUE(rope.sin[0].equal(at::zeros({8})));
  for (int p : {1, 7}) {
    for (int i = 0; i < 8; ++i) {
      const double freq = std::pow(10000.0, -2.0 * (i % 4) / 8.0);
      EXPECT_NEAR(rope.cos[p][i].item<double>(), std::cos(p * freq), 1e-6) << p << "," << i;
      EXPECT_NEAR(rope.sin[p][i].item<double>(), std::sin(p * freq), 1e-6) << p << "," << i;
    }
  }
  EXPECT_EQ(rope.causal_mask[3][3].item<float>(), 0.0f);
  EXPECT_EQ(rope.causal_mask[3][0].item<float>(), 0.0f);
  EXPECT_TRUE(std::isinf(rope.causal_mask[3][4].item<float>()));
  EXPECT_LT(rope.causal_mask[3][4].item<float>(), 0.0f);
}

}  // namespace
}  // namespace qaas::quant
