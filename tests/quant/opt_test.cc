#include "quant/model/opt.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/data/text_dataset.h"
#include "quant/model/checkpoint.h"
#include "quant/model/random_model.h"
#include "quant/model/safetensors.h"
#include "quant/model/tokenizer.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

struct Model {
  std::unique_ptr<Checkpoint> ck;
  OptHead head;
  std::vector<OptLayer> layers;
};

void LoadModel(const std::string& dir, Model* m) {
  auto ck = Checkpoint::Open(dir);
  QAAS_ASSERT_OK(ck);
  m->ck = *std::move(ck);
  auto head = LoadOptHead(*m->ck);
  QAAS_ASSERT_OK(head);
  m->head = *std::move(head);
  for (int i = 0; i < m->ck->config().num_layers; ++i) {
    auto layer = LoadOptLayer(*m->ck, i);
    QAAS_ASSERT_OK(layer);
    m->layers.push_back(*std::move(layer));
  }
}

// Logits [batch, seq, vocab] of int64 ids [batch, seq].
at::Tensor Logits(const Model& m, const at::Tensor& ids) {
  const ModelConfig& c = m.ck->config();
  at::Tensor h = OptEmbed(m.head, ids);
  for (const auto& layer : m.layers) h = OptLayerForward(layer, c, h);
  return OptLogits(m.head, c, h);
}

at::Tensor ReferenceIds() {
  const auto ids = OptReference()["model"]["logits"]["input_ids"].get<std::vector<int64_t>>();
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
}

// Copies tiny-opt to `dir`, letting `edit_tensors` change the stored tensors
// and `edit_config` config.json.
void CopyTinyOpt(const std::string& dir,
                 const std::function<void(std::vector<RawTensor>&)>& edit_tensors,
                 const std::function<void(nlohmann::json&)>& edit_config = nullptr) {
  auto ck = Checkpoint::Open(TinyOptDir());
  QAAS_ASSERT_OK(ck);
  std::vector<RawTensor> tensors;
  for (const auto& name : (*ck)->TensorNames()) {
    auto raw = (*ck)->LoadRaw(name);
    QAAS_ASSERT_OK(raw);
    tensors.push_back(*std::move(raw));
  }
  if (edit_tensors) edit_tensors(tensors);
  QAAS_ASSERT_OK(WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}}));
  nlohmann::json config = nlohmann::json::parse(ReadLocalFile(TinyOptDir() + "/config.json"));
  if (edit_config) edit_config(config);
  WriteLocalFile(dir + "/config.json", config.dump(2));
}

RawTensor* Find(std::vector<RawTensor>& tensors, const std::string& name) {
  for (auto& t : tensors) {
    if (t.name == name) return &t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return nullptr;
}

TEST(OptTest, TinyOptConfigAndTensors) {
  auto ck = Checkpoint::Open(TinyOptDir());
  QAAS_ASSERT_OK(ck);
  const ModelConfig& c = (*ck)->config();
  EXPECT_EQ(c.model_type, "opt");
  EXPECT_EQ(c.architecture, "opt");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 400);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.activation, "relu");
  EXPECT_EQ(c.bos_token_id, 2);
  EXPECT_EQ(OptDecoderPrefix(**ck), "model.decoder.");
  EXPECT_EQ(OptLayerPrefix(**ck, 1), "model.decoder.layers.1.");
  EXPECT_EQ((*ck)->TensorNames(),
            OptReference()["model"]["tensor_names"].get<std::vector<std::string>>());
  EXPECT_FALSE((*ck)->Has("lm_head.weight"));
}

TEST(OptTest, LogitsMatchTheFloat64Reference) {
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  const auto& ref = OptReference()["model"]["logits"];
  at::Tensor ids = ReferenceIds();
  ASSERT_EQ(ids.size(1), 16);
  at::Tensor logits = Logits(m, ids)[0];
  ASSERT_EQ(logits.sizes().vec(), (std::vector<int64_t>{16, 400}));
  EXPECT_EQ(logits.scalar_type(), at::kFloat);

  const int positions = ref["positions"].get<int>();
  ASSERT_EQ(positions, 8);
  std::vector<double> flat;
  for (const auto& row : ref["values"]) {
    for (const auto& v : row) flat.push_back(v.get<double>());
  }
  at::Tensor want =
      at::tensor(flat, at::TensorOptions().dtype(at::kDouble)).reshape({positions, 400});
  at::Tensor got = logits.narrow(0, 0, positions).to(at::kDouble);
  const double max_diff = (got - want).abs().max().item<double>();
  RecordProperty("max_abs_logit_diff", absl::StrFormat("%.3e", max_diff));
  EXPECT_LT(max_diff, 1e-4) << "float32 forward differs from transformers float64";
  // A float32 rounding error, not a near miss: the logits span several units.
  EXPECT_GT(want.abs().max().item<double>(), 2.0);

  const auto argmax = ref["argmax"].get<std::vector<int64_t>>();
  at::Tensor got_argmax = got.argmax(-1);
  for (int p = 0; p < positions; ++p) EXPECT_EQ(got_argmax[p].item<int64_t>(), argmax[p]) << p;
}

TEST(OptTest, PerplexityOfTheFirstWindowsMatchesTheReference) {
  QAAS_REQUIRE_SHARED();
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  auto tok = Tokenizer::Load(TinyOptDir());
  QAAS_ASSERT_OK(tok);
  const auto& ref = OptReference()["model"]["perplexity"];
  // The protocol: [BOS] + encode(whole file), BOS = </s>.
  std::vector<int> ids = (*tok)->Encode(ReadLocalFile(TinyStoriesPath()));
  ASSERT_EQ((*tok)->bos_id(), 2);
  ids.insert(ids.begin(), (*tok)->bos_id());
  ASSERT_EQ(ids.size(), ref["num_tokens"].get<size_t>());
  const int seq_len = ref["seq_len"].get<int>();
  auto windows = MakeEvaluationWindows(ids, seq_len, ref["max_windows"].get<int>());
  QAAS_ASSERT_OK(windows);
  ASSERT_EQ(windows->size(0), 8);

  at::Tensor logits = Logits(m, *windows).to(at::kDouble);
  at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seq_len - 1), -1);
  at::Tensor targets = windows->narrow(1, 1, seq_len - 1).unsqueeze(-1);
  const double nll = -logp.gather(-1, targets).sum().item<double>();
  const int64_t scored = windows->size(0) * (seq_len - 1);
  EXPECT_EQ(scored, ref["float64"]["tokens_scored"].get<int64_t>());
  const double ppl = std::exp(nll / scored);
  const double want = ref["float64"]["perplexity"].get<double>();
  RecordProperty("perplexity", absl::StrFormat("%.9f", ppl));
  EXPECT_NEAR(ppl / want, 1.0, 1e-5) << "perplexity " << ppl << ", float64 reference " << want;
}

TEST(OptTest, EmbeddingReadsPositionsAtOffsetTwo) {
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  at::Tensor ids = ReferenceIds();
  at::Tensor e = OptEmbed(m.head, ids)[0];
  ASSERT_EQ(e.sizes().vec(), (std::vector<int64_t>{16, 64}));
  for (int i : {0, 1, 7, 15}) {
    const int64_t id = ids[0][i].item<int64_t>();
    EXPECT_TRUE(
        at::allclose(e[i], m.head.embed_tokens[id] + m.head.embed_positions[i + 2], 0, 1e-6))
        << "position " << i;
    EXPECT_FALSE(at::allclose(e[i], m.head.embed_tokens[id] + m.head.embed_positions[i], 0, 1e-3))
        << "position " << i << " read without the offset";
  }
  EXPECT_EQ(m.head.embed_positions.size(0), 128 + kOptPositionOffset);
}

TEST(OptTest, LaterTokensDoNotChangeEarlierLogits) {
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  at::Tensor ids = ReferenceIds();
  at::Tensor changed = ids.clone();
  changed.narrow(1, 4, 12).fill_(300);
  at::Tensor a = Logits(m, ids)[0];
  at::Tensor b = Logits(m, changed)[0];
  EXPECT_TRUE(at::allclose(a.narrow(0, 0, 4), b.narrow(0, 0, 4), 0, 1e-6))
      << "position 3 sees a later token";
  EXPECT_GT((a[4] - b[4]).abs().max().item<double>(), 1e-2) << "position 4 ignores its own token";
  EXPECT_GT((a[10] - b[10]).abs().max().item<double>(), 1e-2);

  // Batched windows are independent.
  at::Tensor both = Logits(m, at::cat({ids, changed}, 0));
  EXPECT_LT((both[0] - a).abs().max().item<float>(), 1e-4);
  EXPECT_LT((both[1] - b).abs().max().item<float>(), 1e-4);
}

TEST(OptTest, HookSeesEveryLinearInputAsTwoDimensional) {
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  const ModelConfig& c = m.ck->config();
  at::manual_seed(3);
  at::Tensor x = at::randn({2, 8, c.hidden_size});
  const OptLayer& layer = m.layers[1];
  std::vector<std::string> names;
  std::vector<at::Tensor> inputs;
  at::Tensor with_hook =
      OptLayerForward(layer, c, x, [&](const std::string& n, const at::Tensor& in) {
        names.push_back(n);
        inputs.push_back(in.clone());
      });
  EXPECT_EQ(names, OptLinearNames());
  ASSERT_EQ(inputs.size(), 6u);
  const std::vector<int64_t> widths = {64, 64, 64, 64, 64, 128};
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(inputs[i].sizes().vec(), (std::vector<int64_t>{16, widths[i]})) << names[i];
  }
  EXPECT_TRUE(inputs[0].equal(inputs[1]));
  EXPECT_TRUE(inputs[0].equal(inputs[2]));
  // q/k/v see the normalised layer input.
  EXPECT_TRUE(at::allclose(inputs[0], OptLayerNorm(x, layer.self_attn_layer_norm).reshape({16, 64}),
                           1e-5, 1e-6));
  // fc1 sees the normalised post-attention state, fc2 the ReLU output.
  at::Tensor h = x + OptAttentionForward(layer, c, x);
  EXPECT_TRUE(at::allclose(inputs[4], OptLayerNorm(h, layer.final_layer_norm).reshape({16, 64}),
                           1e-5, 1e-6));
  at::Tensor fc1 = at::linear(inputs[4], layer.linear("fc1").weight, layer.linear("fc1").bias);
  EXPECT_TRUE(at::allclose(inputs[5], at::relu(fc1), 1e-5, 1e-6));
  EXPECT_GE(inputs[5].min().item<float>(), 0.0f);
  EXPECT_GT((inputs[5] == 0).sum().item<int64_t>(), 0) << "ReLU should zero some units";
  // The hook observes without changing the result.
  EXPECT_TRUE(with_hook.equal(OptLayerForward(layer, c, x)));
}

TEST(OptTest, ZeroOutputProjectionsLeaveTheResidualStream) {
  Model m;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &m));
  OptLayer layer = m.layers[0];
  for (const char* name : {"self_attn.out_proj", "fc2"}) {
    layer.linear(name).weight = at::zeros_like(layer.linear(name).weight);
    layer.linear(name).bias = at::zeros_like(layer.linear(name).bias);
  }
  at::Tensor x = at::randn({1, 8, 64});
  EXPECT_TRUE(OptLayerForward(layer, m.ck->config(), x).equal(x));
  EXPECT_THROW(layer.linear("mlp.down_proj"), std::out_of_range);
}

TEST(OptTest, HeadIsTiedUnlessLmHeadIsStored) {
  Model tied;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &tied));
  EXPECT_TRUE(tied.head.lm_head.is_same(tied.head.embed_tokens));

  ScopedTempDir dir;
  at::manual_seed(5);
  at::Tensor lm = at::randn({400, 64});
  ASSERT_NO_FATAL_FAILURE(CopyTinyOpt(dir.path(), [&](std::vector<RawTensor>& t) {
    t.push_back(TensorToRaw("lm_head.weight", lm));
  }));
  Model separate;
  ASSERT_NO_FATAL_FAILURE(LoadModel(dir.path(), &separate));
  EXPECT_TRUE(separate.head.lm_head.equal(lm));
  at::Tensor ids = ReferenceIds();
  // Same hidden states, the stored head.
  at::Tensor h = OptEmbed(separate.head, ids);
  for (const auto& layer : separate.layers) h = OptLayerForward(layer, separate.ck->config(), h);
  at::Tensor want = at::matmul(OptLayerNorm(h, separate.head.final_norm), lm.t());
  EXPECT_TRUE(at::allclose(Logits(separate, ids), want, 1e-5, 1e-5));
  EXPECT_GT((Logits(separate, ids) - Logits(tied, ids)).abs().max().item<float>(), 1.0);

  ScopedTempDir untied;
  ASSERT_NO_FATAL_FAILURE(CopyTinyOpt(untied.path(), nullptr,
                                      [](nlohmann::json& c) { c["tie_word_embeddings"] = false; }));
  auto ck = Checkpoint::Open(untied.path());
  QAAS_ASSERT_OK(ck);
  auto head = LoadOptHead(**ck);
  QAAS_EXPECT_CODE(head, kInvalidArgument);
  EXPECT_TRUE(MessageHas(head, "lm_head.weight"));
}

TEST(OptTest, WithoutBiasesTheLinearsHaveNone) {
  // enable_bias=false: no bias tensors are read, and the layer computes as
  // the biased one with zero biases.
  ScopedTempDir dir;
  ASSERT_NO_FATAL_FAILURE(CopyTinyOpt(
      dir.path(),
      [](std::vector<RawTensor>& t) {
        std::vector<RawTensor> kept;
        for (auto& r : t) {
          const bool linear_bias = r.name.find("_proj.bias") != std::string::npos ||
                                   r.name.find("fc1.bias") != std::string::npos ||
                                   r.name.find("fc2.bias") != std::string::npos;
          if (!linear_bias) kept.push_back(std::move(r));
        }
        t = std::move(kept);
      },
      [](nlohmann::json& c) { c["enable_bias"] = false; }));
  Model biased, unbiased;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &biased));
  ASSERT_NO_FATAL_FAILURE(LoadModel(dir.path(), &unbiased));
  OptLayer zeroed = biased.layers[0];
  for (auto& l : zeroed.linears) l.bias = at::zeros_like(l.bias);
  for (const auto& l : unbiased.layers[0].linears) EXPECT_FALSE(l.bias.defined());
  at::Tensor x = at::randn({1, 8, 64});
  EXPECT_TRUE(at::allclose(OptLayerForward(unbiased.layers[0], unbiased.ck->config(), x),
                           OptLayerForward(zeroed, biased.ck->config(), x), 1e-5, 1e-6));
}

TEST(OptTest, MisShapedOrMissingTensorsAreInvalidArgumentNamingThem) {
  struct Case {
    std::string tensor;
    std::function<void(RawTensor&)> edit;
  };
  const std::vector<Case> cases = {
      {"model.decoder.layers.1.fc1.weight",
       [](RawTensor& r) {
         r.shape = {64, 128};
       }},
      {"model.decoder.layers.0.self_attn.k_proj.bias",
       [](RawTensor& r) {
         r.shape = {32};
         r.data.resize(32 * 4);
       }},
      {"model.decoder.embed_positions.weight",
       [](RawTensor& r) {
         r.shape = {128, 64};  // without the 2 offset rows
         r.data.resize(128 * 64 * 4);
       }},
      {"model.decoder.layers.0.final_layer_norm.bias", nullptr},  // removed
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tensor);
    ScopedTempDir dir;
    ASSERT_NO_FATAL_FAILURE(CopyTinyOpt(dir.path(), [&](std::vector<RawTensor>& t) {
      if (c.edit) {
        RawTensor* r = Find(t, c.tensor);
        ASSERT_NE(r, nullptr);
        c.edit(*r);
      } else {
        t.erase(std::remove_if(t.begin(), t.end(),
                               [&](const RawTensor& r) { return r.name == c.tensor; }),
                t.end());
      }
    }));
    auto ck = Checkpoint::Open(dir.path());
    QAAS_ASSERT_OK(ck);
    absl::Status st = LoadOptHead(**ck).status();
    for (int i = 0; st.ok() && i < 2; ++i) st = LoadOptLayer(**ck, i).status();
    QAAS_EXPECT_CODE(st, kInvalidArgument);
    EXPECT_TRUE(MessageHas(st, c.tensor));
  }
}

TEST(OptTest, VariantsWeDoNotRunAreUnimplemented) {
  struct Case {
    const char* field;
    nlohmann::json value;
  };
  for (const Case& c :
       {Case{"do_layer_norm_before", false}, Case{"word_embed_proj_dim", 32},
        Case{"activation_function", "gelu"}, Case{"_remove_final_layer_norm", true}}) {
    SCOPED_TRACE(c.field);
    ScopedTempDir dir;
    ASSERT_NO_FATAL_FAILURE(
        CopyTinyOpt(dir.path(), nullptr, [&](nlohmann::json& j) { j[c.field] = c.value; }));
    auto ck = Checkpoint::Open(dir.path());
    QAAS_EXPECT_CODE(ck, kUnimplemented);
    EXPECT_TRUE(MessageHas(ck, c.field));
  }
}

TEST(OptTest, LoadingALlamaCheckpointAsOptIsFailedPrecondition) {
  ScopedTempDir dir;
  RandomModelOptions o;
  o.tokenizer_text = kTinyText;
  o.vocab_size = 300;
  QAAS_ASSERT_OK(WriteRandomLlama(o, dir.path()));
  auto ck = Checkpoint::Open(dir.path());
  QAAS_ASSERT_OK(ck);
  EXPECT_EQ((*ck)->config().architecture, "llama");
  QAAS_EXPECT_CODE(LoadOptHead(**ck), kFailedPrecondition);
  QAAS_EXPECT_CODE(LoadOptLayer(**ck, 0), kFailedPrecondition);
}

TEST(OptTest, OriginalDecoderPrefixIsAccepted) {
  // Checkpoints saved from OPTModel name tensors "decoder.*".
  ScopedTempDir dir;
  ASSERT_NO_FATAL_FAILURE(CopyTinyOpt(dir.path(), [](std::vector<RawTensor>& t) {
    for (auto& r : t) r.name = r.name.substr(std::string("model.").size());
  }));
  Model a, b;
  ASSERT_NO_FATAL_FAILURE(LoadModel(TinyOptDir(), &a));
  ASSERT_NO_FATAL_FAILURE(LoadModel(dir.path(), &b));
  EXPECT_EQ(OptLayerPrefix(*b.ck, 0), "decoder.layers.0.");
  at::Tensor ids = ReferenceIds();
  EXPECT_TRUE(Logits(a, ids).equal(Logits(b, ids)));
}

}  // namespace
}  // namespace qaas::quant
