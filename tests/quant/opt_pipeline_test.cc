// The pipeline on an OPT model (tests/data/tiny-opt): its original perplexity
// matches Transformers', and RTN, GPTQ and AdaDim export exactly the weights
// they evaluated, biases and OPT's config included.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/data/text_dataset.h"
#include "quant/eval/perplexity.h"
#include "quant/export.h"
#include "quant/formats/act_quant.h"
#include "quant/methods/rtn.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/opt.h"
#include "quant/model/safetensors.h"
#include "quant/model/tokenizer.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using nlohmann::json;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

PipelineOptions Options(const std::string& out, const std::string& scheme) {
  PipelineOptions o;
  o.model_dir = TinyOptDir();
  o.output_dir = out;
  o.scheme = MustParse(scheme);
  o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 128, 8}};
  return o;
}

// Reads every linear of the artifact back (per-IC ones from their ".ic"
// transpose) and checks the exported biases; returns the weights by name.
std::map<std::string, at::Tensor> UnpackArtifact(const Checkpoint& ck, const DecoderModel& model,
                                                 const std::map<std::string, RawTensor>& tensors, int bits,
                                                 bool checkpoint_biases = true) {
  std::map<std::string, at::Tensor> out;
  for (int i = 0; i < ck.config().num_layers; ++i) {
    auto layer = model.LoadLayer(i);
    EXPECT_TRUE(layer.ok()) << layer.status();
    if (!layer.ok()) return out;
    for (size_t j = 0; j < model.LinearNames().size(); ++j) {
      const std::string name = model.LayerPrefix(i) + model.LinearNames()[j];
      SCOPED_TRACE(name);
      const Linear& lin = layer->linears[j];
      const int64_t rows = lin.weight.size(0), cols = lin.weight.size(1);
      EXPECT_EQ(tensors.count(name + ".weight"), 0u);
      const bool ic = tensors.count(name + ".ic.qweight") > 0;
      auto unpacked = ic ? UnpackGptqLinear(tensors, name + ".ic", bits, rows, cols)
                         : UnpackGptqLinear(tensors, name, bits, cols, rows);
      EXPECT_TRUE(unpacked.ok()) << unpacked.status();
      if (!unpacked.ok()) continue;
      out[name] = ic ? unpacked->t() : *unpacked;
      // The bias, untransposed, in float16 as GPTQ checkpoints keep it.
      EXPECT_TRUE(lin.bias.defined());
      EXPECT_EQ(tensors.count(name + ".ic.bias"), 0u);
      auto bias = tensors.find(name + ".bias");
      EXPECT_NE(bias, tensors.end());
      if (bias == tensors.end()) continue;
      EXPECT_EQ(bias->second.dtype, DType::kF16);
      if (checkpoint_biases) EXPECT_TRUE(RawToTensor(bias->second).equal(lin.bias.to(at::kHalf)));
    }
  }
  return out;
}

// The perplexity of tiny-opt with its linear weights replaced by `weights`
// (biases in float16 as the artifact stores them, norms as in the checkpoint),
// on the evaluation of Options(). With `artifact`, norms and biases come from
// it instead; with `act`, every layer quantizes its activations so.
double PerplexityWith(const std::map<std::string, at::Tensor>& weights,
                      const std::map<std::string, RawTensor>* artifact = nullptr,
                      std::shared_ptr<const LayerActQuant> act = nullptr) {
  auto ck = Checkpoint::Open(TinyOptDir());
  EXPECT_TRUE(ck.ok()) << ck.status();
  auto model = DecoderModel::Create(**ck, at::kCPU, 128);
  EXPECT_TRUE(model.ok()) << model.status();
  auto tok = Tokenizer::Load(TinyOptDir());
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (!ck.ok() || !model.ok() || !tok.ok()) return 0;
  std::vector<int> ids = (*tok)->Encode(ReadLocalFile(TinyStoriesPath()));
  ids.insert(ids.begin(), (*tok)->bos_id());
  auto windows = MakeEvaluationWindows(ids, 128, 8);
  EXPECT_TRUE(windows.ok()) << windows.status();
  if (!windows.ok()) return 0;
  at::Tensor h = (*model)->Embed(*windows);
  for (int i = 0; i < (*ck)->config().num_layers; ++i) {
    auto layer = (*model)->LoadLayer(i);
    EXPECT_TRUE(layer.ok()) << layer.status();
    if (!layer.ok()) return 0;
    for (size_t j = 0; j < layer->linears.size(); ++j) {
      layer->linears[j].weight = weights.at((*model)->LayerPrefix(i) + (*model)->LinearNames()[j]);
      // As the artifact stores them (GPTQ layout: float16).
      layer->linears[j].bias = layer->linears[j].bias.to(at::kHalf).to(at::kFloat);
      if (artifact) {
        layer->linears[j].bias = RawToTensor(artifact->at((*model)->LayerPrefix(i) + (*model)->LinearNames()[j] + ".bias"))
                                     .to(at::kFloat);
      }
    }
    if (artifact) {
      for (auto& [name, t] : layer->norms) t = RawToTensor(artifact->at((*model)->LayerPrefix(i) + name)).to(at::kFloat);
    }
    layer->act = act;
    h = (*model)->LayerForward(*layer, h);  // 8 windows: the pipeline's one batch
  }
  return WindowsNll(h, *windows, [&](const at::Tensor& x) { return (*model)->Logits(x); }).perplexity();
}

TEST(OptPipelineTest, RtnW8KeepsTheReferencePerplexityAndExportsOpt) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  PipelineOptions o = Options(dir.path() + "/out", "W8A16");
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const json& ref = OptReference()["model"]["perplexity"];
  const json j = ToJson(*report);
  ASSERT_EQ(j["evaluations"].size(), 1u);
  const json& e = j["evaluations"][0];
  EXPECT_EQ(e["seq_len"], 128);
  EXPECT_EQ(e["windows"], 8);
  EXPECT_EQ(e["tokens"], ref["float64"]["tokens_scored"]);
  const double want = ref["float64"]["perplexity"].get<double>();
  const double original = e["perplexity_original"].get<double>();
  const double quantized = e["perplexity_quantized"].get<double>();
  RecordProperty("perplexity_original", std::to_string(original));
  RecordProperty("perplexity_quantized", std::to_string(quantized));
  EXPECT_NEAR(original, want, 1e-4 * want) << "reference " << want;
  EXPECT_NEAR(quantized, original, 0.01 * original);
  EXPECT_NE(quantized, original);

  // Two layers of six linears, named as OPT's.
  const json& layers = j["layers"];
  ASSERT_EQ(layers.size(), 12u);
  EXPECT_EQ(layers[0]["name"], "model.decoder.layers.0.self_attn.q_proj");
  EXPECT_EQ(layers[11]["name"], "model.decoder.layers.1.fc2");

  const std::string artifact = o.output_dir + "/artifact";
  const json config = json::parse(ReadLocalFile(artifact + "/config.json"));
  EXPECT_EQ(config["model_type"], "opt");
  EXPECT_EQ(config["architectures"][0], "OPTForCausalLM");
  EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(config["quantization_config"]["bits"], 8);
  for (const char* f : {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_EQ(ReadLocalFile(artifact + "/" + f), ReadLocalFile(TinyOptDir() + "/" + f)) << f;
  }

  const auto tensors = ReadAll(artifact + "/model.safetensors");
  for (const char* name : {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                           "model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias",
                           "model.decoder.layers.1.self_attn_layer_norm.bias",
                           "model.decoder.layers.1.final_layer_norm.weight"}) {
    EXPECT_EQ(tensors.count(name), 1u) << name;
  }
  // Head (4 tensors; lm_head is tied) + 2 x (4 norm tensors + 6 x (4 packed + bias)).
  EXPECT_EQ(tensors.size(), 4u + 2 * (4 + 6 * 5));

  auto ck = Checkpoint::Open(TinyOptDir());
  QAAS_ASSERT_OK(ck);
  auto model = DecoderModel::Create(**ck, at::kCPU, 128);
  QAAS_ASSERT_OK(model);
  const auto weights = UnpackArtifact(**ck, **model, tensors, 8);
  ASSERT_EQ(weights.size(), 12u);
  for (int i = 0; i < 2; ++i) {
    auto layer = (*model)->LoadLayer(i);
    QAAS_ASSERT_OK(layer);
    for (size_t j = 0; j < 6; ++j) {
      const std::string name = (*model)->LayerPrefix(i) + OptLinearNames()[j];
      EXPECT_TRUE(weights.at(name).equal(QuantizeRtn(layer->linears[j].weight, o.scheme.weights).dequantized))
          << name;
    }
  }
  EXPECT_NEAR(PerplexityWith(weights), quantized, 1e-9 * quantized);
}

TEST(OptPipelineTest, GptqAndAdaDimExportWhatTheyEvaluated) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  for (const std::string method : {"gptq", "adadim"}) {
    SCOPED_TRACE(method);
    PipelineOptions o = Options(dir.path() + "/" + method, "W4A16g32");
    o.calibration = DatasetRef{TinyStoriesPath(), "tinystories-calib", 64, 0};
    o.num_samples = 8;
    RecipeStep step;
    step.method = method;
    if (method == "adadim") step.Set("base", "gptq");
    o.recipe = {step};
    auto report = RunPipeline(o);
    QAAS_ASSERT_OK(report);
    const json j = ToJson(*report);
    const json& e = j["evaluations"][0];
    const double original = e["perplexity_original"].get<double>();
    const double quantized = e["perplexity_quantized"].get<double>();
    RecordProperty("perplexity_quantized_" + method, std::to_string(quantized));
    EXPECT_NE(quantized, original);
    EXPECT_LT(quantized, 2 * original);
    ASSERT_EQ(j["layers"].size(), 12u);
    for (const auto& layer : j["layers"]) {
      EXPECT_EQ(layer["method"], method == "gptq" ? "gptq" : "adadim-gptq");
      EXPECT_GT(layer["details"]["damp"].get<double>(), 0);
    }

    const std::string artifact = o.output_dir + "/artifact";
    const json config = json::parse(ReadLocalFile(artifact + "/config.json"));
    EXPECT_EQ(config["model_type"], "opt");
    EXPECT_EQ(config["quantization_config"]["bits"], 4);
    EXPECT_EQ(config["quantization_config"]["group_size"], 32);
    auto ck = Checkpoint::Open(TinyOptDir());
    QAAS_ASSERT_OK(ck);
    auto model = DecoderModel::Create(**ck, at::kCPU, 128);
    QAAS_ASSERT_OK(model);
    const auto weights = UnpackArtifact(**ck, **model, ReadAll(artifact + "/model.safetensors"), 4);
    ASSERT_EQ(weights.size(), 12u);
    // The unpacked weights give exactly the perplexity the report states.
    EXPECT_NEAR(PerplexityWith(weights), quantized, 1e-9 * quantized);
    if (method == "adadim") {
      // The dequantized export holds the same weights, the float32 biases and OPT's config.
      const std::string plain_dir = o.output_dir + "/artifact-dequantized";
      const auto plain = ReadAll(plain_dir + "/model.safetensors");
      for (const auto& [name, w] : weights) {
        SCOPED_TRACE(name);
        ASSERT_EQ(plain.count(name + ".weight"), 1u);
        EXPECT_TRUE(RawToTensor(plain.at(name + ".weight")).equal(w));
        EXPECT_EQ(plain.count(name + ".bias"), 1u);
      }
      EXPECT_EQ(plain.count("model.decoder.embed_positions.weight"), 1u);
      EXPECT_EQ(json::parse(ReadLocalFile(plain_dir + "/config.json"))["model_type"], "opt");
      int per_ic = 0;
      for (const LayerReport& layer : report->layers) per_ic += layer.details["axis"] == "per_ic";
      RecordProperty("adadim_per_ic_layers", per_ic);
    }
  }
}

// OmniQuant with quantized activations changes OPT's norms and biases (LET's
// scales and shifts): the artifact's norms, float16 biases and unpacked codes,
// with the same activation quantizers, give exactly the reported perplexity.
TEST(OptPipelineTest, OmniQuantExportsWhatItEvaluated) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  PipelineOptions o = Options(dir.path() + "/out", "W4A8");
  o.calibration = DatasetRef{TinyStoriesPath(), "tinystories-calib", 64, 0};
  o.num_samples = 8;
  RecipeStep step{"omniquant"};
  step.Set("epochs", 3);
  o.recipe = {step};
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const double quantized = report->evaluations[0].perplexity_quantized;
  EXPECT_TRUE(report->blocks[0].transforms["omniquant"].contains("let"));

  const auto tensors = ReadAll(o.output_dir + "/artifact/model.safetensors");
  auto ck = Checkpoint::Open(TinyOptDir());
  QAAS_ASSERT_OK(ck);
  auto model = DecoderModel::Create(**ck, at::kCPU, 128);
  QAAS_ASSERT_OK(model);
  const auto weights = UnpackArtifact(**ck, **model, tensors, 4, /*checkpoint_biases=*/false);
  ASSERT_EQ(weights.size(), 12u);
  // LET moved the norms and the norm-fed linears' biases.
  auto layer = (*model)->LoadLayer(0);
  QAAS_ASSERT_OK(layer);
  const std::string prefix = (*model)->LayerPrefix(0);
  EXPECT_FALSE(RawToTensor(tensors.at(prefix + "self_attn_layer_norm.weight")).equal(layer->norm("self_attn_layer_norm.weight")));
  EXPECT_FALSE(RawToTensor(tensors.at(prefix + "fc1.bias")).equal(layer->linears[4].bias.to(at::kHalf)));

  auto act = std::make_shared<LayerActQuant>();
  for (auto& q : act->inputs) q = DynamicQuantizer(o.scheme.activations);
  EXPECT_NEAR(PerplexityWith(weights, &tensors, act), quantized, 1e-9 * quantized);
}

TEST(OptPipelineTest, TokenizerWithoutBosIsInvalidArgument) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  // A copy of tiny-opt whose tokenizer names no BOS token.
  const std::string& model_dir = dir.path();
  for (const char* f : {"config.json", "model.safetensors", "vocab.json", "merges.txt"}) {
    WriteLocalFile(model_dir + "/" + f, ReadLocalFile(TinyOptDir() + "/" + f));
  }
  auto tok = Tokenizer::Load(model_dir);
  QAAS_ASSERT_OK(tok);
  if ((*tok)->bos_id() >= 0) GTEST_SKIP() << "vocab.json + merges.txt alone still give a BOS token";
  PipelineOptions o = Options(dir.path() + "/out", "W8A16");
  o.model_dir = model_dir;
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "tokenizer"));
  EXPECT_TRUE(MessageHas(report, "BOS"));
}

}  // namespace
}  // namespace qaas::quant
