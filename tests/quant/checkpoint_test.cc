#include "quant/model/checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/model/llama.h"
#include "quant/model/random_model.h"
#include "quant/model/safetensors.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::LocalPathExists;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

RandomModelOptions SmallModel() {
  RandomModelOptions o;  // hidden 64, intermediate 172, 2 layers, 4 heads, 2 KV heads, vocab 512
  o.tokenizer_text = kTinyText;
  o.seed = 7;
  return o;
}

std::unique_ptr<Checkpoint> OpenOrDie(const std::string& dir) {
  auto ck = Checkpoint::Open(dir);
  EXPECT_TRUE(ck.ok()) << ck.status();
  return ck.ok() ? *std::move(ck) : nullptr;
}

void ExpectLayerShapes(const LlamaLayer& layer) {
  EXPECT_EQ(layer.input_norm.sizes().vec(), (std::vector<int64_t>{64}));
  EXPECT_EQ(layer.post_norm.sizes().vec(), (std::vector<int64_t>{64}));
  ASSERT_EQ(layer.linears.size(), 7u);
  const std::vector<std::vector<int64_t>> want = {{64, 64},  {32, 64},  {32, 64}, {64, 64},
                                                  {172, 64}, {172, 64}, {64, 172}};
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(LlamaLinearNames()[i]);
    EXPECT_EQ(layer.linears[i].weight.sizes().vec(), want[i]);
    EXPECT_EQ(layer.linears[i].weight.scalar_type(), at::kFloat);
    EXPECT_FALSE(layer.linears[i].bias.defined());
  }
  EXPECT_TRUE(layer.linear("mlp.down_proj").weight.equal(layer.linears[6].weight));
}

class CheckpointDTypeTest : public ::testing::TestWithParam<std::pair<const char*, DType>> {};

TEST_P(CheckpointDTypeTest, RandomModelOpensAndLoadsInFloat32) {
  const auto [dtype, stored] = GetParam();
  ScopedTempDir dir;
  RandomModelOptions o = SmallModel();
  o.dtype = dtype;
  QAAS_ASSERT_OK(WriteRandomLlama(o, dir.path()));
  auto ck = OpenOrDie(dir.path());
  ASSERT_NE(ck, nullptr);
  EXPECT_EQ(ck->config().hidden_size, 64);
  EXPECT_EQ(ck->config().num_layers, 2);
  EXPECT_EQ(ck->config().torch_dtype, dtype);
  EXPECT_EQ(ck->WeightFiles(), (std::vector<std::string>{"model.safetensors"}));
  // embed + 2 x (2 norms + 7 linears) + final norm; tied, so no lm_head.
  EXPECT_EQ(ck->TensorNames().size(), 20u);
  EXPECT_FALSE(ck->Has("lm_head.weight"));

  auto entry = ck->Entry("model.layers.0.self_attn.q_proj.weight");
  QAAS_ASSERT_OK(entry);
  EXPECT_EQ(entry->dtype, stored);
  uint64_t total = 0;
  for (const auto& name : ck->TensorNames()) {
    auto e = ck->Entry(name);
    QAAS_ASSERT_OK(e);
    EXPECT_EQ(e->dtype, stored) << name;
    total += e->numel() * DTypeSize(stored);
  }
  EXPECT_EQ(ck->total_bytes(), total);

  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    auto layer = LoadLlamaLayer(*ck, i);
    QAAS_ASSERT_OK(layer);
    ExpectLayerShapes(*layer);
    EXPECT_TRUE(layer->input_norm.equal(at::ones({64})));
  }
  // Load converts exactly: the stored values, widened to float32.
  auto raw = ck->LoadRaw("model.layers.1.mlp.up_proj.weight");
  QAAS_ASSERT_OK(raw);
  auto loaded = ck->Load("model.layers.1.mlp.up_proj.weight");
  QAAS_ASSERT_OK(loaded);
  EXPECT_TRUE(loaded->equal(RawToTensor(*raw).to(at::kFloat)));
  EXPECT_GT(loaded->std().item<double>(), 0.01);  // init_std 0.02, not zeros
  EXPECT_LT(loaded->std().item<double>(), 0.03);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, CheckpointDTypeTest,
                         ::testing::Values(std::make_pair("float32", DType::kF32),
                                           std::make_pair("float16", DType::kF16),
                                           std::make_pair("bfloat16", DType::kBF16)));

// num_experts > 0 writes a Mixtral (its config keys and per-expert tensor
// names), which opens as a mixture of experts: what moe_bench quantizes.
TEST(CheckpointTest, RandomMixtralOpensAsAMixtureOfExperts) {
  ScopedTempDir dir;
  RandomModelOptions o = SmallModel();
  o.num_experts = 4;
  o.experts_per_token = 2;
  QAAS_ASSERT_OK(WriteRandomLlama(o, dir.path()));
  auto ck = OpenOrDie(dir.path());
  ASSERT_NE(ck, nullptr);
  const ModelConfig& c = ck->config();
  EXPECT_EQ(c.model_type, "mixtral");
  EXPECT_EQ(c.moe.num_experts, 4);
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.expert_intermediate_size, 172);
  EXPECT_TRUE(c.moe.mixtral_names);
  // embed + 2 x (2 norms + 4 attention + router + 4 x 3 expert linears) + final norm.
  EXPECT_EQ(ck->TensorNames().size(), 2u + 2 * (2 + 4 + 1 + 12));
  for (int i = 0; i < 2; ++i) {
    auto layer = LoadLlamaLayer(*ck, i);
    QAAS_ASSERT_OK(layer);
    const std::vector<std::string> names = LinearNamesOf(c);
    ASSERT_EQ(layer->linears.size(), names.size());
    EXPECT_EQ(layer->router.sizes().vec(), (std::vector<int64_t>{4, 64}));
    const size_t w2 = std::find(names.begin(), names.end(), "block_sparse_moe.experts.3.w2") - names.begin();
    ASSERT_LT(w2, names.size());
    EXPECT_EQ(layer->linears[w2].weight.sizes().vec(), (std::vector<int64_t>{64, 172}));
  }
  o.experts_per_token = 5;
  ScopedTempDir bad;
  QAAS_EXPECT_CODE(WriteRandomLlama(o, bad.path()), kInvalidArgument);
}

// Tensors written from their own memory (a layer state's way) read back
// equal: a transposed (non-contiguous) one, integer codes, bfloat16, and a
// file equal byte for byte to the copying writer's.
TEST(CheckpointTest, TensorsWrittenWithoutCopiesReadBackEqual) {
  ScopedTempDir dir;
  const at::Tensor w = at::randn({5, 3}).t(), codes = at::randint(0, 16, {4, 6}, at::kInt),
                   half = at::randn({7}).to(at::kBFloat16);
  ASSERT_FALSE(w.is_contiguous());
  TensorsToWrite views;
  views.Add("w", w);
  views.Add("codes", codes);
  views.Add("half", half);
  QAAS_ASSERT_OK(WriteSafetensors(dir.path() + "/views.safetensors", views.views(), {{"k", "v"}}));
  QAAS_ASSERT_OK(WriteSafetensors(dir.path() + "/copies.safetensors",
                                  {TensorToRaw("w", w), TensorToRaw("codes", codes), TensorToRaw("half", half)},
                                  {{"k", "v"}}));
  EXPECT_EQ(ReadLocalFile(dir.path() + "/views.safetensors"), ReadLocalFile(dir.path() + "/copies.safetensors"));
  auto f = SafetensorsFile::Open(dir.path() + "/views.safetensors");
  QAAS_ASSERT_OK(f);
  auto all = (*f)->ReadAll();
  QAAS_ASSERT_OK(all);
  std::map<std::string, at::Tensor> read;
  for (const RawTensor& r : *all) read[r.name] = RawToTensor(r);
  EXPECT_TRUE(read.at("w").equal(w));
  EXPECT_TRUE(read.at("codes").equal(codes));
  EXPECT_TRUE(read.at("half").equal(half));
}

TEST(CheckpointTest, ShardedModelEqualsSingleFileModel) {
  ScopedTempDir one, three;
  RandomModelOptions o = SmallModel();
  QAAS_ASSERT_OK(WriteRandomLlama(o, one.path()));
  o.shards = 3;
  QAAS_ASSERT_OK(WriteRandomLlama(o, three.path()));
  EXPECT_FALSE(LocalPathExists(three.path() + "/model.safetensors"));
  auto index = nlohmann::json::parse(ReadLocalFile(three.path() + "/model.safetensors.index.json"));
  EXPECT_EQ(index["weight_map"].size(), 20u);

  auto a = OpenOrDie(one.path());
  auto b = OpenOrDie(three.path());
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->WeightFiles(), (std::vector<std::string>{"model-00001-of-00003.safetensors",
                                                         "model-00002-of-00003.safetensors",
                                                         "model-00003-of-00003.safetensors"}));
  EXPECT_EQ(a->TensorNames(), b->TensorNames());
  EXPECT_EQ(a->total_bytes(), b->total_bytes());
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), b->total_bytes());
  for (int i = 0; i < 2; ++i) {
    auto la = LoadLlamaLayer(*a, i);
    auto lb = LoadLlamaLayer(*b, i);
    QAAS_ASSERT_OK(la);
    QAAS_ASSERT_OK(lb);
    ExpectLayerShapes(*lb);
    for (size_t j = 0; j < 7; ++j) EXPECT_TRUE(la->linears[j].weight.equal(lb->linears[j].weight));
  }
  auto ha = LoadLlamaHead(*a);
  auto hb = LoadLlamaHead(*b);
  QAAS_ASSERT_OK(ha);
  QAAS_ASSERT_OK(hb);
  EXPECT_TRUE(ha->embed.equal(hb->embed));
}

TEST(CheckpointTest, SeedMakesTheModel) {
  ScopedTempDir a, b, c;
  RandomModelOptions o = SmallModel();
  QAAS_ASSERT_OK(WriteRandomLlama(o, a.path()));
  QAAS_ASSERT_OK(WriteRandomLlama(o, b.path()));
  o.seed = 8;
  QAAS_ASSERT_OK(WriteRandomLlama(o, c.path()));
  EXPECT_EQ(ReadLocalFile(a.path() + "/model.safetensors"), ReadLocalFile(b.path() + "/model.safetensors"));
  EXPECT_NE(ReadLocalFile(a.path() + "/model.safetensors"), ReadLocalFile(c.path() + "/model.safetensors"));
}

TEST(CheckpointTest, TiedHeadIsTheEmbeddingAndUntiedHeadIsItsOwn) {
  ScopedTempDir tied_dir, untied_dir;
  RandomModelOptions o = SmallModel();
  QAAS_ASSERT_OK(WriteRandomLlama(o, tied_dir.path()));
  o.tie_word_embeddings = false;
  QAAS_ASSERT_OK(WriteRandomLlama(o, untied_dir.path()));

  auto tied_ck = OpenOrDie(tied_dir.path());
  ASSERT_NE(tied_ck, nullptr);
  auto tied = LoadLlamaHead(*tied_ck);
  QAAS_ASSERT_OK(tied);
  EXPECT_EQ(tied->embed.sizes().vec(), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(tied->final_norm.sizes().vec(), (std::vector<int64_t>{64}));
  EXPECT_TRUE(tied->lm_head.equal(tied->embed));

  auto untied_ck = OpenOrDie(untied_dir.path());
  ASSERT_NE(untied_ck, nullptr);
  ASSERT_TRUE(untied_ck->Has("lm_head.weight"));
  auto untied = LoadLlamaHead(*untied_ck);
  QAAS_ASSERT_OK(untied);
  EXPECT_EQ(untied->lm_head.sizes().vec(), (std::vector<int64_t>{512, 64}));
  EXPECT_FALSE(untied->lm_head.equal(untied->embed));
  auto stored = untied_ck->Load("lm_head.weight");
  QAAS_ASSERT_OK(stored);
  EXPECT_TRUE(untied->lm_head.equal(*stored));
}

// Rewrites model.safetensors with `edit` applied to its tensors.
void RewriteWeights(const std::string& dir, const std::function<void(std::vector<RawTensor>&)>& edit) {
  std::vector<RawTensor> tensors;
  {
    auto ck = OpenOrDie(dir);
    ASSERT_NE(ck, nullptr);
    for (const auto& name : ck->TensorNames()) {
      auto raw = ck->LoadRaw(name);
      QAAS_ASSERT_OK(raw);
      tensors.push_back(*std::move(raw));
    }
  }
  edit(tensors);
  QAAS_ASSERT_OK(WriteSafetensors(dir + "/model.safetensors", tensors));
}

TEST(CheckpointTest, TensorShapeNotMatchingConfigIsInvalidArgumentNamingIt) {
  ScopedTempDir dir;
  QAAS_ASSERT_OK(WriteRandomLlama(SmallModel(), dir.path()));
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  RewriteWeights(dir.path(), [&](std::vector<RawTensor>& tensors) {
    for (auto& t : tensors) {
      if (t.name == name) t.shape = {64, 172};  // the transpose: same bytes, wrong shape
    }
  });
  auto ck = OpenOrDie(dir.path());
  ASSERT_NE(ck, nullptr);
  QAAS_EXPECT_OK(LoadLlamaLayer(*ck, 0));
  auto layer = LoadLlamaLayer(*ck, 1);
  QAAS_EXPECT_CODE(layer, kInvalidArgument);
  EXPECT_TRUE(MessageHas(layer, name));
  EXPECT_TRUE(MessageHas(layer, "[64, 172]"));
  EXPECT_TRUE(MessageHas(layer, "[172, 64]"));
}

TEST(CheckpointTest, MissingTensorIsInvalidArgumentNamingIt) {
  ScopedTempDir dir;
  QAAS_ASSERT_OK(WriteRandomLlama(SmallModel(), dir.path()));
  const std::string name = "model.layers.0.self_attn.v_proj.weight";
  RewriteWeights(dir.path(), [&](std::vector<RawTensor>& tensors) {
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [&](const RawTensor& t) { return t.name == name; }),
                  tensors.end());
  });
  auto ck = OpenOrDie(dir.path());
  ASSERT_NE(ck, nullptr);
  EXPECT_FALSE(ck->Has(name));
  auto layer = LoadLlamaLayer(*ck, 0);
  QAAS_EXPECT_CODE(layer, kInvalidArgument);
  EXPECT_TRUE(MessageHas(layer, name));
  QAAS_EXPECT_OK(LoadLlamaLayer(*ck, 1));
  auto missing_layer = LoadLlamaLayer(*ck, 2);  // the config has 2 layers
  QAAS_EXPECT_CODE(missing_layer, kInvalidArgument);
  EXPECT_TRUE(MessageHas(missing_layer, "model.layers.2."));
}

TEST(CheckpointTest, IntegerWeightIsInvalidArgumentNamingIt) {
  ScopedTempDir dir;
  QAAS_ASSERT_OK(WriteRandomLlama(SmallModel(), dir.path()));
  const std::string name = "model.layers.0.input_layernorm.weight";
  RewriteWeights(dir.path(), [&](std::vector<RawTensor>& tensors) {
    for (auto& t : tensors) {
      if (t.name == name) t.dtype = DType::kI32;  // 64 x 4 bytes either way
    }
  });
  auto ck = OpenOrDie(dir.path());
  ASSERT_NE(ck, nullptr);
  auto layer = LoadLlamaLayer(*ck, 0);
  QAAS_EXPECT_CODE(layer, kInvalidArgument);
  EXPECT_TRUE(MessageHas(layer, name));
  EXPECT_TRUE(MessageHas(layer, "I32"));
}

TEST(CheckpointTest, MissingDirectoryConfigOrWeightsIsNotFound) {
  ScopedTempDir dir;
  auto ck = Checkpoint::Open(dir.path() + "/absent");
  QAAS_EXPECT_CODE(ck, kNotFound);
  EXPECT_TRUE(MessageHas(ck, "absent"));

  QAAS_ASSERT_OK(WriteRandomLlama(SmallModel(), dir.path() + "/m"));
  ASSERT_EQ(std::remove((dir.path() + "/m/model.safetensors").c_str()), 0);
  ck = Checkpoint::Open(dir.path() + "/m");
  QAAS_EXPECT_CODE(ck, kNotFound);
  EXPECT_TRUE(MessageHas(ck, "model.safetensors"));

  ASSERT_EQ(std::remove((dir.path() + "/m/config.json").c_str()), 0);
  ck = Checkpoint::Open(dir.path() + "/m");
  QAAS_EXPECT_CODE(ck, kNotFound);
  EXPECT_TRUE(MessageHas(ck, "config.json"));
}

TEST(CheckpointTest, BadConfigOrIndexIsReported) {
  ScopedTempDir dir;
  RandomModelOptions o = SmallModel();
  o.shards = 2;
  QAAS_ASSERT_OK(WriteRandomLlama(o, dir.path()));
  const std::string config = ReadLocalFile(dir.path() + "/config.json");
  const std::string index_path = dir.path() + "/model.safetensors.index.json";
  const std::string index = ReadLocalFile(index_path);

  WriteLocalFile(dir.path() + "/config.json", "{\"model_type\": \"llama\"}");
  auto ck = Checkpoint::Open(dir.path());
  QAAS_EXPECT_CODE(ck, kInvalidArgument);
  EXPECT_TRUE(MessageHas(ck, "hidden_size"));
  WriteLocalFile(dir.path() + "/config.json", config);

  WriteLocalFile(index_path, "{\"weight_map\": {\"model.norm.weight\": \"../escape.safetensors\"}}");
  ck = Checkpoint::Open(dir.path());
  QAAS_EXPECT_CODE(ck, kInvalidArgument);
  EXPECT_TRUE(MessageHas(ck, "../escape.safetensors"));

  WriteLocalFile(index_path, "[]");
  ck = Checkpoint::Open(dir.path());
  QAAS_EXPECT_CODE(ck, kInvalidArgument);
  EXPECT_TRUE(MessageHas(ck, "weight_map"));

  // A tensor stored in both shards.
  WriteLocalFile(index_path, index);
  auto raw = [&] {
    auto c = OpenOrDie(dir.path());
    return c->LoadRaw("model.embed_tokens.weight");
  }();
  QAAS_ASSERT_OK(raw);
  const std::string second = dir.path() + "/model-00002-of-00002.safetensors";
  std::vector<RawTensor> tensors;
  {
    auto f = SafetensorsFile::Open(second);
    QAAS_ASSERT_OK(f);
    for (const auto& [name, entry] : (*f)->header().tensors) {
      tensors.push_back({name, entry.dtype, entry.shape, *(*f)->ReadRaw(name)});
    }
  }
  tensors.push_back(*raw);
  QAAS_ASSERT_OK(WriteSafetensors(second, tensors));
  ck = Checkpoint::Open(dir.path());
  QAAS_EXPECT_CODE(ck, kInvalidArgument);
  EXPECT_TRUE(MessageHas(ck, "model.embed_tokens.weight"));
}

TEST(CheckpointTest, RawTensorRoundTripKeepsDTypeShapeAndBytes) {
  at::Tensor t = at::arange(12, at::TensorOptions().dtype(at::kFloat)).reshape({3, 4}).to(at::kBFloat16);
  RawTensor raw = TensorToRaw("x", t.t());  // non-contiguous input
  EXPECT_EQ(raw.name, "x");
  EXPECT_EQ(raw.dtype, DType::kBF16);
  EXPECT_EQ(raw.shape, (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(raw.data.size(), 24u);
  at::Tensor back = RawToTensor(raw);
  EXPECT_EQ(back.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(back.equal(t.t()));
  for (auto type : {at::kDouble, at::kHalf, at::kLong, at::kInt, at::kShort, at::kChar, at::kByte, at::kBool}) {
    at::Tensor x = at::arange(6, at::TensorOptions().dtype(at::kFloat)).to(type);
    EXPECT_TRUE(RawToTensor(TensorToRaw("x", x)).equal(x)) << type;
  }
}

}  // namespace
}  // namespace qaas::quant
