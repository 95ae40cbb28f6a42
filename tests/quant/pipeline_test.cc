#include "quant/pipeline.h"

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <memory>
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/export.h"
#include "quant/methods/rtn.h"
#include "quant/model/checkpoint.h"
#include "quant/model/llama.h"
#include "quant/model/random_model.h"
#include "quant/model/safetensors.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/random_model_fixture.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using nlohmann::json;
using ::qaas::testing::LocalPathExists;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::SharedDir;
using ::qaas::testing::WriteLocalFile;

const json& Reference() {
  static const json* j =
      new json(json::parse(ReadLocalFile(ReferencePath("stories260k_reference.json"))));
  return *j;
}

// One W4A16g128 RTN run of stories260k, shared by the tests that inspect it.
class Stories260kPipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (SharedDir().empty()) return;
    dir_ = new ScopedTempDir();
    PipelineOptions o;
    o.model_dir = Stories260kDir();
    o.output_dir = dir_->path() + "/out";
    o.scheme = MustParse("W4A16g128");
    o.recipe = {RecipeStep{"rtn"}};
    o.calibration = DatasetRef{TinyStoriesPath(), "tinystories-calib", 128, 0};
    o.num_samples = 4;
    o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 512, 0}};
    o.on_progress = [](const PipelineProgress& p) { progress_->push_back(p); };
    progress_ = new std::vector<PipelineProgress>();
    result_ = new absl::StatusOr<Report>(RunPipeline(o));
  }
  static void TearDownTestSuite() {
    delete result_;
    delete progress_;
    delete dir_;
    result_ = nullptr;
    progress_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    QAAS_REQUIRE_SHARED();
    QAAS_ASSERT_OK(*result_);
  }
  static const Report& report() { return **result_; }
  static std::string out() { return dir_->path() + "/out"; }

  static ScopedTempDir* dir_;
  static absl::StatusOr<Report>* result_;
  static std::vector<PipelineProgress>* progress_;
};
ScopedTempDir* Stories260kPipelineTest::dir_ = nullptr;
absl::StatusOr<Report>* Stories260kPipelineTest::result_ = nullptr;
std::vector<PipelineProgress>* Stories260kPipelineTest::progress_ = nullptr;

TEST_F(Stories260kPipelineTest, OriginalPerplexityMatchesTheReference) {
  const json& ref = Reference()["perplexity"]["tinystories"]["seq_len_512"]["float64"];
  ASSERT_EQ(report().evaluations.size(), 1u);
  const json e = ToJson(report())["evaluations"][0];
  EXPECT_EQ(e["dataset"], "tinystories");
  EXPECT_EQ(e["seq_len"], 512);
  EXPECT_EQ(e["windows"], 86);
  EXPECT_EQ(e["windows"], ref["windows"]);
  EXPECT_EQ(e["tokens"], 43946);
  EXPECT_EQ(e["tokens"], ref["tokens_scored"]);
  const double want = ref["perplexity"].get<double>();
  const double got = e["perplexity_original"].get<double>();
  EXPECT_NEAR(got, want, 1e-4 * want) << "reference " << want;
  // Quantization costs something, but W4 g128 on this model not everything.
  const double quantized = e["perplexity_quantized"].get<double>();
  EXPECT_GT(quantized, got);
  EXPECT_LT(quantized, 2 * got);
}

TEST_F(Stories260kPipelineTest, ReportJsonHasEveryField) {
  const json written = json::parse(ReadLocalFile(out() + "/report.json"));
  EXPECT_EQ(written, ToJson(report()));
  EXPECT_TRUE(LocalPathExists(out() + "/report.md"));
  EXPECT_NE(ReadLocalFile(out() + "/report.md").find("tinystories"), std::string::npos);

  EXPECT_EQ(written["scheme"], "W4A16g128");
  EXPECT_EQ(written["recipe"], json::array({"rtn"}));
  EXPECT_EQ(written["num_layers"], 5);
  EXPECT_EQ(written["artifact_format"], "gptq");
  EXPECT_NE(ReadLocalFile(out() + "/report.md").find("artifact format: gptq"), std::string::npos);
  EXPECT_EQ(written["model"], Stories260kDir());
  EXPECT_EQ(written["calibration"]["num_samples"], 4);
  EXPECT_EQ(written["calibration"]["seq_len"], 128);
  EXPECT_EQ(written["calibration"]["tokens"], 4 * 128);
  // RTN with dynamic activations needs no calibration: the data the job
  // names is read and checked, but no calibration pass runs.
  EXPECT_EQ(written["calibration"]["dataset"], "tinystories-calib");
  EXPECT_NE(written["calibration"]["skipped"].get<std::string>().find("nothing"), std::string::npos);
  EXPECT_TRUE(written["blocks"].empty());
  EXPECT_EQ(written["seconds"]["calibration"].get<double>(), 0);

  const json& layers = written["layers"];
  ASSERT_EQ(layers.size(), 35u);
  for (int i = 0; i < 5; ++i) {
    for (size_t j = 0; j < 7; ++j) {
      const json& l = layers[i * 7 + j];
      EXPECT_EQ(l["name"], LayerPrefix(i) + LlamaLinearNames()[j]);
      EXPECT_EQ(l["method"], "rtn");
      EXPECT_GE(l["seconds"].get<double>(), 0);
      EXPECT_GT(l["relative_weight_error"].get<double>(), 0.01);
      EXPECT_LT(l["relative_weight_error"].get<double>(), 0.3);
    }
  }
  const uint64_t original = written["size"]["original_bytes"].get<uint64_t>();
  const uint64_t quantized = written["size"]["quantized_bytes"].get<uint64_t>();
  EXPECT_GT(original, 1000000u);  // ~264K float32 parameters
  EXPECT_LT(quantized, original);
  for (const char* k : {"calibration", "quantization", "evaluation", "total"}) {
    ASSERT_TRUE(written["seconds"].contains(k)) << k;
    EXPECT_GE(written["seconds"][k].get<double>(), 0) << k;
  }
  EXPECT_GE(written["seconds"]["total"].get<double>(), written["seconds"]["evaluation"].get<double>());
}

TEST_F(Stories260kPipelineTest, ArtifactIsAGptqCheckpointOfTheRtnWeights) {
  const std::string artifact = out() + "/artifact";
  ASSERT_TRUE(LocalPathExists(artifact + "/model.safetensors"));
  const json config = json::parse(ReadLocalFile(artifact + "/config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(config["quantization_config"]["bits"], 4);
  EXPECT_EQ(config["quantization_config"]["group_size"], 128);
  EXPECT_EQ(config["hidden_size"], 64);  // the original config is kept
  EXPECT_EQ(ReadLocalFile(artifact + "/tokenizer.model"), ReadLocalFile(Stories260kDir() + "/tokenizer.model"));
  const json manifest = json::parse(ReadLocalFile(artifact + "/qaas_manifest.json"));
  EXPECT_EQ(manifest["scheme"], "W4A16g128");
  EXPECT_EQ(manifest["format"], "gptq");
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(LocalPathExists(out() + "/checkpoints/layer-" + std::to_string(i) + ".safetensors")) << i;
  }

  const auto tensors = ReadAll(artifact + "/model.safetensors");
  EXPECT_EQ(tensors.count("model.embed_tokens.weight"), 1u);
  EXPECT_EQ(tensors.count("model.norm.weight"), 1u);
  EXPECT_EQ(tensors.count("lm_head.weight"), 0u);  // tied, as in the original
  // embed + final norm + 5 x (2 norms + 7 x (qweight, qzeros, scales, g_idx)).
  EXPECT_EQ(tensors.size(), 2u + 5 * (2 + 7 * 4));

  auto ck = Checkpoint::Open(Stories260kDir());
  QAAS_ASSERT_OK(ck);
  const TensorQuant& spec = MustParse("W4A16g128").weights;
  for (int i = 0; i < 5; ++i) {
    auto layer = LoadLlamaLayer(**ck, i);
    QAAS_ASSERT_OK(layer);
    EXPECT_TRUE(RawToTensor(tensors.at(LayerPrefix(i) + "input_layernorm.weight")).equal(layer->input_norm));
    for (size_t j = 0; j < 7; ++j) {
      const std::string name = LayerPrefix(i) + LlamaLinearNames()[j];
      SCOPED_TRACE(name);
      EXPECT_EQ(tensors.count(name + ".weight"), 0u);
      const at::Tensor& w = layer->linears[j].weight;
      auto unpacked = UnpackGptqLinear(tensors, name, 4, w.size(1), w.size(0));
      QAAS_ASSERT_OK(unpacked);
      const QuantizedLinear q = QuantizeRtn(w, spec);
      EXPECT_TRUE(unpacked->equal(q.dequantized));
      EXPECT_NEAR(report().layers[i * 7 + j].relative_weight_error,
                  RelativeError(w, q.dequantized), 1e-9);
    }
  }
}

TEST_F(Stories260kPipelineTest, ProgressReportsEveryLayer) {
  for (int i = 0; i < 5; ++i) {
    bool loading = false, done = false;
    for (const auto& p : *progress_) {
      EXPECT_EQ(p.num_layers, 5);
      EXPECT_NE(p.step, "calibrating");  // RTN: no calibration pass
      loading |= p.layer == i && p.step == "loading";
      done |= p.layer == i + 1 && p.step == "layer done";
    }
    EXPECT_TRUE(loading) << "no progress for layer " << i;
    EXPECT_TRUE(done) << "layer " << i << " never finished";
  }
  ASSERT_FALSE(progress_->empty());
  EXPECT_EQ(progress_->back().step, "exporting");
  EXPECT_EQ(progress_->back().layer, 5);
  for (size_t k = 1; k < progress_->size(); ++k) EXPECT_GE((*progress_)[k].layer, (*progress_)[k - 1].layer);
}

TEST(PipelineTest, W8IsNearlyLossless) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  PipelineOptions o;
  o.model_dir = Stories260kDir();
  o.output_dir = dir.path();
  o.scheme = MustParse("W8A16");
  o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 512, 24}};
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const json e = ToJson(*report)["evaluations"][0];
  EXPECT_EQ(e["windows"], 24);
  EXPECT_EQ(e["tokens"], 24 * 511);
  const double original = e["perplexity_original"].get<double>();
  const double quantized = e["perplexity_quantized"].get<double>();
  EXPECT_NEAR(quantized, original, 0.01 * original);
  EXPECT_NE(quantized, original);  // the weights did change
  const json config = json::parse(ReadLocalFile(dir.path() + "/artifact/config.json"));
  EXPECT_EQ(config["quantization_config"]["bits"], 8);
  EXPECT_EQ(config["quantization_config"]["group_size"], -1);
}

TEST_F(RandomModelPipelineTest, RunsAndReportsBothModels) {
  PipelineOptions o = Options();
  std::vector<PipelineProgress> progress;
  o.on_progress = [&](const PipelineProgress& p) { progress.push_back(p); };
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const json e = ToJson(*report)["evaluations"][0];
  EXPECT_EQ(e["windows"], 2);
  EXPECT_EQ(e["tokens"], 2 * 63);
  // A random model predicts about uniformly over its 512-entry vocabulary.
  EXPECT_GT(e["perplexity_original"].get<double>(), 300);
  EXPECT_LT(e["perplexity_original"].get<double>(), 800);
  EXPECT_EQ(report->layers.size(), 14u);
  for (int i = 0; i < 2; ++i) {
    int loading = 0;
    for (const auto& p : progress) {
      EXPECT_EQ(p.num_layers, 2);
      loading += p.layer == i && p.step == "loading";
    }
    EXPECT_EQ(loading, 1) << "layer " << i << " of 2";
  }
}

TEST_F(RandomModelPipelineTest, UnquantizedWeightsKeepThePerplexity) {
  PipelineOptions o = Options();
  o.scheme = MustParse("W16A16");
  auto report = RunPipeline(o);
  QAAS_ASSERT_OK(report);
  const json e = ToJson(*report)["evaluations"][0];
  EXPECT_EQ(e["perplexity_quantized"], e["perplexity_original"]);
  EXPECT_EQ(report->layers[0].method, "none");
  const json config = json::parse(ReadLocalFile(o.output_dir + "/artifact/config.json"));
  EXPECT_FALSE(config.contains("quantization_config"));
  const auto tensors = ReadAll(o.output_dir + "/artifact/model.safetensors");
  EXPECT_EQ(tensors.count("model.layers.1.mlp.down_proj.weight"), 1u);
  EXPECT_EQ(tensors.count("model.layers.1.mlp.down_proj.qweight"), 0u);
}

TEST_F(RandomModelPipelineTest, UntiedShardedModelExportsItsHead) {
  RandomModelOptions m;
  m.tokenizer_text = kTinyText;
  m.tie_word_embeddings = false;
  m.shards = 2;
  m.dtype = "bfloat16";
  QAAS_ASSERT_OK(WriteRandomLlama(m, model_dir()));
  ASSERT_EQ(std::remove((model_dir() + "/model.safetensors").c_str()), 0);
  PipelineOptions o = Options();
  QAAS_ASSERT_OK(RunPipeline(o));
  const auto tensors = ReadAll(o.output_dir + "/artifact/model.safetensors");
  ASSERT_EQ(tensors.count("lm_head.weight"), 1u);
  EXPECT_EQ(tensors.at("lm_head.weight").dtype, DType::kBF16);  // copied verbatim
  EXPECT_EQ(tensors.count("model.layers.1.self_attn.q_proj.qweight"), 1u);
}

TEST_F(RandomModelPipelineTest, EvaluationLongerThanTheContextIsInvalidArgument) {
  PipelineOptions o = Options();
  o.evaluations[0].seq_len = 1024;
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "context"));
  EXPECT_TRUE(MessageHas(report, "1024"));

  o = Options();
  o.calibration->seq_len = 513;
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "context"));
}

TEST_F(RandomModelPipelineTest, EmptyCalibrationTextIsInvalidArgumentNamingTheJobsUri) {
  WriteLocalFile(dir_.path() + "/empty.txt", "");
  PipelineOptions o = Options();
  // As a worker stages it: a cache path, and the uri the job gave.
  o.calibration = DatasetRef{dir_.path() + "/empty.txt", "s3://bucket/calib.txt", 32, 0};
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "calibration: s3://bucket/calib.txt: dataset text is empty"));
  EXPECT_FALSE(MessageHas(report, dir_.path()));
}

TEST_F(RandomModelPipelineTest, TooShortEvaluationTextIsInvalidArgumentNamingTheDataset) {
  WriteLocalFile(dir_.path() + "/short.txt", "Lily ran.");
  PipelineOptions o = Options();
  o.evaluations[0] = DatasetRef{dir_.path() + "/short.txt", "s3://bucket/short.txt", 64, 0};
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "s3://bucket/short.txt"));
}

TEST_F(RandomModelPipelineTest, MissingModelDirectoryIsNotFound) {
  PipelineOptions o = Options();
  o.model_dir = dir_.path() + "/absent";
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kNotFound);
  EXPECT_TRUE(MessageHas(report, "absent"));
}

// Puts `value` into element [0, 0] of tensor `name` of the model.
void Poison(const std::string& model_dir, const std::string& name, float value) {
  const std::string path = model_dir + "/model.safetensors";
  std::vector<RawTensor> tensors;
  for (auto& [n, raw] : ReadAll(path)) {
    if (n == name) {
      at::Tensor t = RawToTensor(raw).to(at::kFloat).clone();
      t.view({-1})[0] = value;
      raw = TensorToRaw(n, t.to(RawToTensor(raw).scalar_type()));
    }
    tensors.push_back(raw);
  }
  QAAS_ASSERT_OK(WriteSafetensors(path, tensors));
}

// A model with a NaN weight used to give a SUCCEEDED RTN job with null
// perplexities (and GPTQ an INTERNAL "Hessian is not positive definite").
TEST_F(RandomModelPipelineTest, NonFiniteWeightsFailNamingTheTensor) {
  Poison(model_dir(), "model.layers.1.mlp.up_proj.weight", std::nanf(""));
  for (const char* method : {"rtn", "gptq", "omniquant"}) {
    SCOPED_TRACE(method);
    PipelineOptions o = Options();
    o.recipe = {RecipeStep{method, {}}};
    if (std::string(method) == "omniquant") o.recipe[0].Set("epochs", 1);
    auto report = RunPipeline(o);
    QAAS_EXPECT_CODE(report, kDataLoss);
    EXPECT_TRUE(MessageHas(report, "model.layers.1.mlp.up_proj.weight"));
    EXPECT_TRUE(MessageHas(report, "1 non-finite values"));
    EXPECT_FALSE(LocalPathExists(o.output_dir + "/report.json"));
    EXPECT_FALSE(LocalPathExists(o.output_dir + "/artifact/model.safetensors"));
  }
}

TEST_F(RandomModelPipelineTest, NonFiniteEmbeddingsFailSayingSo) {
  PipelineOptions o = Options();
  // One hidden channel of every token's embedding, so whichever tokens the
  // windows hold meet it.
  const std::string path = model_dir() + "/model.safetensors";
  std::vector<RawTensor> tensors;
  for (auto& [n, raw] : ReadAll(path)) {
    if (n == "model.embed_tokens.weight") {
      at::Tensor t = RawToTensor(raw).to(at::kFloat).clone();
      t.select(1, 0).fill_(NAN);
      raw = TensorToRaw(n, t.to(RawToTensor(raw).scalar_type()));
    }
    tensors.push_back(raw);
  }
  QAAS_ASSERT_OK(WriteSafetensors(path, tensors));
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kDataLoss);
  EXPECT_TRUE(MessageHas(report, "token embeddings"));
}

TEST_F(RandomModelPipelineTest, UnknownMethodsAndUnimplementedSchemesAreRefused) {
  // A method outside the table is a bad request, as the server says at submit.
  PipelineOptions o = Options();
  o.recipe = {RecipeStep{"magic"}};
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "unknown method 'magic'"));

  o = Options();
  o.recipe = {RecipeStep{"gptq"}};
  o.calibration.reset();
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "calibration"));

  o = Options();
  o.scheme = MustParse("Wfp8e5m2A16");
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kUnimplemented);
  EXPECT_TRUE(MessageHas(report, "fp8_e5m2"));

  o = Options();
  o.scheme = MustParse("Wmxfp4Amxfp4");
  o.recipe = {RecipeStep{"rptq"}};
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "integer activations"));

  o = Options();
  o.recipe = {RecipeStep{"rtn"}, RecipeStep{"smoothquant"}};
  report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kInvalidArgument);
  EXPECT_TRUE(MessageHas(report, "before the weight quantizer"));
  EXPECT_FALSE(LocalPathExists(o.output_dir + "/report.json"));
}

TEST_F(RandomModelPipelineTest, StopAfterTheFirstLayerIsCancelled) {
  PipelineOptions o = Options();
  int polls = 0;
  std::vector<PipelineProgress> progress;
  o.should_stop = [&] { return ++polls > 1; };
  o.on_progress = [&](const PipelineProgress& p) { progress.push_back(p); };
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kCancelled);
  EXPECT_EQ(polls, 2);
  EXPECT_TRUE(LocalPathExists(o.output_dir + "/checkpoints/layer-0.safetensors"));
  EXPECT_FALSE(LocalPathExists(o.output_dir + "/checkpoints/layer-1.safetensors"));
  EXPECT_FALSE(LocalPathExists(o.output_dir + "/report.json"));
  for (const auto& p : progress) EXPECT_LE(p.layer, 1) << p.step;
}

// OmniQuant reports each epoch as progress and stops between epochs, not
// only at layer boundaries.
TEST_F(RandomModelPipelineTest, OmniQuantReportsEpochsAndStopsBetweenThem) {
  PipelineOptions o = Options();
  RecipeStep step{"omniquant"};
  step.Set("epochs", 5);
  o.recipe = {step};
  std::vector<PipelineProgress> progress;
  bool stop = false;
  o.on_progress = [&](const PipelineProgress& p) {
    progress.push_back(p);
    if (p.step == "training" && p.epoch == 2) stop = true;
  };
  o.should_stop = [&] { return stop; };
  auto report = RunPipeline(o);
  QAAS_EXPECT_CODE(report, kCancelled);
  EXPECT_TRUE(MessageHas(report, "epoch 2 of 5"));
  std::vector<int> epochs;
  for (const auto& p : progress) {
    if (p.epochs > 0) {
      EXPECT_EQ(p.step, "training");
      EXPECT_EQ(p.epochs, 5);
      EXPECT_EQ(p.layer, 0);
      EXPECT_GT(p.loss, 0);
      epochs.push_back(p.epoch);
    }
  }
  EXPECT_EQ(epochs, (std::vector<int>{1, 2}));
  EXPECT_FALSE(LocalPathExists(o.output_dir + "/checkpoints/layer-0.safetensors"));
}

}  // namespace
}  // namespace qaas::quant

namespace qaas::quant {
namespace {

// GPTQ and AdaDim through the whole pipeline: the artifact holds exactly the
// weights that were evaluated, and the report says how each layer was made.
TEST_F(RandomModelPipelineTest, GptqAndAdaDimExportWhatTheyEvaluated) {
  for (const std::string method : {"gptq", "adadim"}) {
    SCOPED_TRACE(method);
    PipelineOptions o = Options();
    o.output_dir = dir_.path() + "/" + method;
    o.num_samples = 8;
    RecipeStep step{method};
    step.Set("act_order", true);
    if (method == "adadim") step.Set("base", "gptq");
    o.recipe = {step};
    o.scheme = MustParse("W3A16g32");
    auto report = RunPipeline(o);
    QAAS_ASSERT_OK(report);
    const json config = json::parse(ReadLocalFile(o.output_dir + "/artifact/config.json"));
    const auto tensors = ReadAll(o.output_dir + "/artifact/model.safetensors");
    std::map<std::string, RawTensor> plain;
    if (method == "adadim") plain = ReadAll(o.output_dir + "/artifact-dequantized/model.safetensors");
    int per_ic = 0;
    const json layers = ToJson(*report)["layers"];  // as report.json has them
    for (const json& layer : layers) {
      const std::string name = layer["name"];
      SCOPED_TRACE(name);
      EXPECT_GT(layer["details"]["damp"].get<double>(), 0);
      const bool ic = method == "adadim" && layer["details"]["axis"] == "per_ic";
      if (method == "adadim") {
        EXPECT_EQ(layer["method"], "adadim-gptq");
        EXPECT_TRUE(layer["details"]["axis"] == "per_ic" || layer["details"]["axis"] == "per_oc");
        EXPECT_EQ(ic, layer["details"]["block_mse_per_ic"].get<double>() <
                          layer["details"]["block_mse_per_oc"].get<double>());
      }
      per_ic += ic;
      // Unpack from the artifact; for AdaDim compare with the dequantized export.
      auto entry = tensors.find(name + (ic ? ".ic" : "") + ".g_idx");
      ASSERT_NE(entry, tensors.end());
      if (method == "adadim") {
        const at::Tensor reference = RawToTensor(plain.at(name + ".weight")).to(at::kFloat);
        const int64_t rows = reference.size(0), cols = reference.size(1);
        auto unpacked = ic ? UnpackGptqLinear(tensors, name + ".ic", 3, rows, cols)
                           : UnpackGptqLinear(tensors, name, 3, cols, rows);
        QAAS_ASSERT_OK(unpacked);
        EXPECT_TRUE((ic ? unpacked->t() : *unpacked).equal(reference));
      }
    }
    EXPECT_EQ(config["quantization_config"]["desc_act"], true);
    if (per_ic > 0) {
      EXPECT_EQ(config["quantization_config"]["quant_method"], "qaas");
      EXPECT_EQ(config["quantization_config"]["per_input_channel_layers"].size(), static_cast<size_t>(per_ic));
    } else {
      EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
    }
  }
}

TEST_F(RandomModelPipelineTest, GptqAndAdaDimNeedCalibration) {
  for (const std::string method : {"gptq", "adadim"}) {
    PipelineOptions o = Options();
    o.recipe = {RecipeStep{method}};
    o.calibration.reset();
    auto report = RunPipeline(o);
    QAAS_EXPECT_CODE(report, kInvalidArgument);
    EXPECT_TRUE(MessageHas(report, "calibration"));
  }
}

// The GPTQ paper's claim on a real model: at 3 bits GPTQ beats RTN.
TEST(Stories260kGptq, BeatsRtnAtThreeBits) {
  QAAS_REQUIRE_SHARED();
  ScopedTempDir dir;
  double ppl[2];
  for (int k = 0; k < 2; ++k) {
    PipelineOptions o;
    o.model_dir = Stories260kDir();
    o.output_dir = dir.path() + (k ? "/gptq" : "/rtn");
    o.scheme = MustParse("W3A16g128");
    o.recipe = {RecipeStep{k ? "gptq" : "rtn"}};
    o.calibration = DatasetRef{SharedDir() + "/data/wikitext-2/valid.txt", "wikitext2-valid", 512, 0};
    o.num_samples = 32;
    o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 512, 24}};
    auto report = RunPipeline(o);
    QAAS_ASSERT_OK(report);
    ppl[k] = report->evaluations[0].perplexity_quantized;
  }
  EXPECT_LT(ppl[1], ppl[0]) << "gptq " << ppl[1] << " rtn " << ppl[0];
}

}  // namespace
}  // namespace qaas::quant
