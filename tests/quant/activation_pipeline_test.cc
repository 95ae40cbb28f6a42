// The pipeline with activation / KV-cache quantization and the transform
// recipes (SmoothQuant, RPTQ), on a random model and on stories260k with and
// without activation outliers.
#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "quant/formats/number_format.h"
#include "quant/model/checkpoint.h"
#include "quant/model/outliers.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::SharedDir;
using ::qaas::testing::WriteLocalFile;
using json = nlohmann::json;

class ActivationPipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomModelOptions m;
    m.tokenizer_text = kTinyText;
    m.num_heads = 4;
    m.num_kv_heads = 2;
    m.seed = 9;
    QAAS_ASSERT_OK(WriteRandomLlama(m, dir_.path() + "/model"));
    std::string text;
    for (int i = 0; i < 6; ++i) text += kTinyText;
    WriteLocalFile(dir_.path() + "/text.txt", text);
  }
  PipelineOptions Options(const std::string& scheme, std::vector<RecipeStep> recipe) const {
    PipelineOptions o;
    o.model_dir = dir_.path() + "/model";
    o.output_dir = dir_.path() + "/out";
    o.scheme = MustParse(scheme);
    o.recipe = std::move(recipe);
    o.calibration = DatasetRef{dir_.path() + "/text.txt", "calib", 32, 0};
    o.num_samples = 4;
    o.evaluations = {DatasetRef{dir_.path() + "/text.txt", "eval", 64, 2}};
    return o;
  }
  json Config() const { return json::parse(ReadLocalFile(dir_.path() + "/out/artifact/config.json")); }
  ScopedTempDir dir_;
};

TEST_F(ActivationPipelineTest, RptqW4A4Kv4ExportsReorderAndStaticParameters) {
  RecipeStep rptq{"rptq"};
  rptq.Set("clusters", std::vector<int>{8, 4, 4, 8, 8});
  auto report = RunPipeline(Options("W4A4KV4", {rptq, RecipeStep{"gptq"}}));
  QAAS_ASSERT_OK(report);
  const json j = ToJson(*report);
  EXPECT_EQ(j["recipe"], json({"rptq", "gptq"}));
  const json& e = j["evaluations"][0];
  EXPECT_TRUE(std::isfinite(e["perplexity_quantized"].get<double>()));
  EXPECT_NE(e["perplexity_quantized"], e["perplexity_original"]);
  EXPECT_EQ(j["blocks"][0]["transforms"]["rptq"]["clusters"]["attn_in"], 8);

  const json config = Config();
  EXPECT_EQ(config["quantization_config"]["quant_method"], "qaas");
  EXPECT_EQ(config["quantization_config"]["format"], "rptq");
  EXPECT_EQ(config["quantization_config"]["activations"]["bits"], 4);
  EXPECT_EQ(config["quantization_config"]["kv_cache"]["bits"], 4);
  EXPECT_EQ(config["quantization_config"]["kv_cache"]["symmetric"], false);
  const auto tensors = ReadAll(dir_.path() + "/out/artifact/model.safetensors");
  for (const char* name : {"model.layers.1.input_layernorm.reorder_index",
                           "model.layers.1.post_attention_layernorm.reorder_index",
                           "model.layers.1.act_quant.attn_in.scale", "model.layers.1.act_quant.mlp_hidden.zero",
                           "model.layers.1.self_attn.q_proj.qweight"}) {
    EXPECT_EQ(tensors.count(name), 1u) << name;
  }
  EXPECT_EQ(tensors.at("model.layers.0.act_quant.attn_out.scale").shape, std::vector<int64_t>({64}));
}

TEST_F(ActivationPipelineTest, SmoothQuantGptqWithMxWeightsAndActivations) {
  auto report = RunPipeline(Options("Wmxfp4Amxfp4", {RecipeStep{"smoothquant"}, RecipeStep{"gptq"}}));
  QAAS_ASSERT_OK(report);
  EXPECT_TRUE(report->blocks[1].transforms.contains("smoothquant"));
  const json config = Config();
  EXPECT_EQ(config["quantization_config"]["format"], "mx");
  EXPECT_EQ(config["quantization_config"]["weights"]["element"], "fp4_e2m1");
  EXPECT_EQ(config["quantization_config"]["activations"]["block_size"], 32);
  const auto tensors = ReadAll(dir_.path() + "/out/artifact/model.safetensors");
  // down_proj: [64, 172] -> 4-bit codes, 86 bytes a row; 6 blocks of 32.
  EXPECT_EQ(tensors.at("model.layers.0.mlp.down_proj.mx_codes").shape, std::vector<int64_t>({64, 86}));
  EXPECT_EQ(tensors.at("model.layers.0.mlp.down_proj.mx_scales").shape, std::vector<int64_t>({64, 6}));
  EXPECT_EQ(tensors.count("model.layers.0.mlp.down_proj.weight"), 0u);
}

TEST_F(ActivationPipelineTest, StaticActivationsAreCalibratedAndExported) {
  auto report = RunPipeline(Options("W8A8_static", {RecipeStep{"rtn"}}));
  QAAS_ASSERT_OK(report);
  const json& ranges = report->blocks[0].transforms["static_activation_ranges"];
  ASSERT_TRUE(ranges.contains("mlp_hidden"));
  EXPECT_LT(ranges["attn_in"][0].get<double>(), 0);
  EXPECT_GT(ranges["attn_in"][1].get<double>(), 0);
  const auto tensors = ReadAll(dir_.path() + "/out/artifact/model.safetensors");
  EXPECT_EQ(tensors.at("model.layers.0.act_quant.attn_in.scale").shape, std::vector<int64_t>({}));
  EXPECT_EQ(tensors.count("model.layers.0.act_quant.attn_in.zero"), 0u);  // symmetric
}

TEST_F(ActivationPipelineTest, ActivationOnlySchemeKeepsFloatWeights) {
  auto report = RunPipeline(Options("W16A8KV8", {RecipeStep{"smoothquant"}}));
  QAAS_ASSERT_OK(report);
  const json j = ToJson(*report);
  EXPECT_EQ(j["recipe"], json({"smoothquant", "rtn"}));
  const json& e = j["evaluations"][0];
  // 8-bit activations and cache on a random model: close to, not equal to, float.
  EXPECT_NE(e["perplexity_quantized"], e["perplexity_original"]);
  EXPECT_NEAR(e["perplexity_quantized"].get<double>() / e["perplexity_original"].get<double>(), 1.0, 0.02);
  EXPECT_EQ(Config()["quantization_config"]["format"], "float-weights");
  const auto tensors = ReadAll(dir_.path() + "/out/artifact/model.safetensors");
  EXPECT_EQ(tensors.count("model.layers.0.self_attn.q_proj.weight"), 1u);
}

// stories260k and its outlier variant: the outliers break plain W8A8, and
// SmoothQuant and RPTQ get most of it back.
class OutlierRecoveryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (SharedDir().empty()) return;
    dir_ = new ScopedTempDir();
    auto record = MakeOutlierModel(Stories260kDir(), dir_->path() + "/outliers", OutlierOptions{});
    if (!record.ok()) {
      status_ = new absl::Status(record.status());
      return;
    }
    status_ = new absl::Status();
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete status_;
    dir_ = nullptr;
    status_ = nullptr;
  }
  void SetUp() override {
    QAAS_REQUIRE_SHARED();
    QAAS_ASSERT_OK(*status_);
  }
  // (original, quantized) perplexity on 16 windows of 512 tokens.
  static std::pair<double, double> Run(const std::string& model, const std::string& scheme,
                                       std::vector<RecipeStep> recipe) {
    PipelineOptions o;
    o.model_dir = model;
    o.output_dir = dir_->path() + "/out";
    o.scheme = MustParse(scheme);
    o.recipe = std::move(recipe);
    o.calibration = DatasetRef{TinyStoriesPath(), "calib", 512, 0};
    o.num_samples = 8;
    o.evaluations = {DatasetRef{TinyStoriesPath(), "tinystories", 512, 16}};
    auto report = RunPipeline(o);
    EXPECT_TRUE(report.ok()) << report.status();
    if (!report.ok()) return {0, 0};
    const json e = ToJson(*report)["evaluations"][0];
    return {e["perplexity_original"].get<double>(), e["perplexity_quantized"].get<double>()};
  }
  static std::string outliers() { return dir_->path() + "/outliers"; }
  static ScopedTempDir* dir_;
  static absl::Status* status_;
};
ScopedTempDir* OutlierRecoveryTest::dir_ = nullptr;
absl::Status* OutlierRecoveryTest::status_ = nullptr;

TEST_F(OutlierRecoveryTest, SmoothQuantAndRptqRecoverWhatOutliersCostW8A8) {
  const auto [fp, rtn_plain] = Run(Stories260kDir(), "W8A8", {RecipeStep{"rtn"}});
  const auto [fp_outliers, rtn_outliers] = Run(outliers(), "W8A8", {RecipeStep{"rtn"}});
  const auto [fp_sq, sq] = Run(outliers(), "W8A8", {RecipeStep{"smoothquant"}, RecipeStep{"rtn"}});
  const auto [fp_rptq, rptq] = Run(outliers(), "W8A8", {RecipeStep{"rptq"}, RecipeStep{"rtn"}});
  // The transform keeps the float model.
  EXPECT_NEAR(fp_outliers / fp, 1.0, 1e-4);
  EXPECT_EQ(fp_sq, fp_outliers);
  EXPECT_EQ(fp_rptq, fp_outliers);
  // Plain W8A8 costs little on stories260k and a lot with outliers ...
  const double loss_plain = rtn_plain - fp, loss_outliers = rtn_outliers - fp;
  EXPECT_GT(loss_outliers, 10 * std::max(loss_plain, 1e-3)) << rtn_plain << " " << rtn_outliers;
  // ... and both methods recover most of it.
  EXPECT_LT(sq - fp, 0.3 * loss_outliers) << "smoothquant " << sq;
  EXPECT_LT(rptq - fp, 0.3 * loss_outliers) << "rptq " << rptq;
}

}  // namespace
}  // namespace qaas::quant
