// The staged layer forward (quant/model/staged_forward.h): GPTQ's sequential
// gathering with each calibration batch's forward run once gives the same
// quantized model, bit for bit, as recomputing every batch up to each group,
// whether all, some or none of the batches are staged; and the staged
// forwards unwind cleanly on errors and early ends.
#include "quant/model/staged_forward.h"

#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/pipeline.h"
#include "quant/report.h"
#include "quant/scheme.h"
#include "quant/util/status_macros.h"
#include "tests/quant/quant_test_util.h"
#include "tests/quant/random_model_fixture.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;

// A model directory from tests/data with a tokenizer that covers kTinyText.
class StagedPipelineTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = tmp_.path() + "/model";
    CopyModelForTinyText(GetParam(), model_);
    text_ = tmp_.path() + "/text.txt";
    WriteTinyText(text_);
    auto ck = Checkpoint::Open(model_);
    QAAS_ASSERT_OK(ck);
    bytes_per_window_ = static_cast<uint64_t>(StagedBytesPerToken((*ck)->config()) * kSeqLen);
  }

  // 4 calibration windows in batches of `batch` (1: up to 4 staged forwards).
  absl::StatusOr<Report> Run(const char* scheme, std::vector<RecipeStep> recipe, uint64_t staged_bytes,
                             const std::string& out, int batch = 1) {
    PipelineOptions o;
    o.model_dir = model_;
    o.output_dir = out;
    QAAS_ASSIGN_OR_RETURN(o.scheme, ParseScheme(scheme));
    o.recipe = std::move(recipe);
    o.calibration = DatasetRef{text_, "text", kSeqLen, 0};
    o.num_samples = 4;
    o.batch_size = batch;
    o.staged_forward_bytes = staged_bytes;
    o.evaluations = {DatasetRef{text_, "text", kSeqLen, 4}};
    return RunPipeline(o);
  }

  static constexpr int kSeqLen = 24;
  ScopedTempDir tmp_;
  std::string model_, text_;
  uint64_t bytes_per_window_ = 0;
};

TEST_P(StagedPipelineTest, StagingAllSomeOrNoBatchesQuantizesTheSameModel) {
  struct Job {
    const char* scheme;
    std::vector<RecipeStep> recipe;
  };
  // Plain GPTQ, and GPTQ under quantized activations (SmoothQuant's scales
  // folded in, the layer's activation quantizers in its forward).
  for (const Job& job : {Job{"W4A16g16", {{"gptq", {}}}}, Job{"W8A8", {{"smoothquant", {}}, {"gptq", {}}}}}) {
    SCOPED_TRACE(job.scheme);
    std::vector<Report> reports;
    std::vector<std::string> artifacts;
    // None, two of the four windows (two staged, two recomputed), all.
    const std::vector<uint64_t> budgets = {0, 2 * bytes_per_window_ + bytes_per_window_ / 2, 1ull << 40};
    for (size_t b = 0; b < budgets.size(); ++b) {
      const std::string out = tmp_.path() + "/" + job.recipe.back().method + std::to_string(b);
      auto report = Run(job.scheme, job.recipe, budgets[b], out);
      ASSERT_TRUE(report.ok()) << report.status();
      reports.push_back(*report);
      artifacts.push_back(ReadLocalFile(out + "/artifact/model.safetensors"));
    }
    EXPECT_EQ(reports[0].calibration.value("staged_windows", -1), 0);
    EXPECT_EQ(reports[1].calibration.value("staged_windows", -1), 2);
    EXPECT_EQ(reports[2].calibration.value("staged_windows", -1), 4);
    for (size_t b = 1; b < reports.size(); ++b) {
      SCOPED_TRACE(b);
      // Every quantized weight (the next layers' Hessians come from the
      // staged outputs), every block's output error, every perplexity.
      EXPECT_TRUE(artifacts[b] == artifacts[0]);
      ASSERT_EQ(reports[b].layers.size(), reports[0].layers.size());
      for (size_t l = 0; l < reports[0].layers.size(); ++l) {
        EXPECT_EQ(reports[b].layers[l].relative_weight_error, reports[0].layers[l].relative_weight_error)
            << reports[0].layers[l].name;
        EXPECT_EQ(reports[b].layers[l].calibration_tokens, reports[0].layers[l].calibration_tokens);
      }
      ASSERT_EQ(reports[b].blocks.size(), reports[0].blocks.size());
      for (size_t l = 0; l < reports[0].blocks.size(); ++l) {
        EXPECT_EQ(reports[b].blocks[l].output_relative_error, reports[0].blocks[l].output_relative_error) << l;
      }
      EXPECT_EQ(reports[b].evaluations[0].perplexity_quantized, reports[0].evaluations[0].perplexity_quantized);
    }
  }
}

// A batch larger than the calibration set holds only its windows: a budget
// for the 4 windows stages them all, though 8 windows would not fit it.
TEST_P(StagedPipelineTest, ABatchOfFewerWindowsIsBudgetedForThoseOnly) {
  const std::string out = tmp_.path() + "/batch8";
  auto report = Run("W4A16g16", {{"gptq", {}}}, 4 * bytes_per_window_ + bytes_per_window_ / 2, out, /*batch=*/8);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->calibration.value("staged_windows", -1), 4);
}

INSTANTIATE_TEST_SUITE_P(Models, StagedPipelineTest,
                         ::testing::Values("families/llama3", "families/gemma2", "families/qwen3", "families/phi3",
                                           "tiny-opt"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param.substr(info.param.rfind('/') + 1);
                           for (char& c : name) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// The staged forward on its own, over a random LLaMA's first layer.
class StagedForwardTest : public RandomModelPipelineTest {
 protected:
  void SetUp() override {
    RandomModelPipelineTest::SetUp();
    auto ck = Checkpoint::Open(model_dir());
    QAAS_ASSERT_OK(ck);
    ck_ = *std::move(ck);
    auto model = DecoderModel::Create(*ck_, at::kCPU, 16);
    QAAS_ASSERT_OK(model);
    model_ = *std::move(model);
    auto layer = model_->LoadLayer(0);
    QAAS_ASSERT_OK(layer);
    layer_ = *std::move(layer);
    for (Linear& l : layer_.linears) l.weight = l.weight.clone();  // the tests change them in place
    at::manual_seed(1);
    hidden_ = at::randn({5, 16, ck_->config().hidden_size});
  }
  const std::vector<LinearGroup>& groups() const { return model_->SequentialGroups(); }

  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<DecoderModel> model_;
  DecoderLayer layer_;
  at::Tensor hidden_;
};

TEST_F(StagedForwardTest, EachLinearRunsWithTheWeightsItHasAfterItsGroup) {
  // Batches of 2 over 5 windows: 3 batches, the last of 1 window.
  StagedLayerForward staged(*model_, &layer_, hidden_, 2, 3, groups());
  EXPECT_EQ(staged.num_batches(), 3);
  EXPECT_EQ(staged.windows(), 5);
  const std::vector<LinearGroup>& groups = this->groups();
  const auto& names = model_->LinearNames();
  for (size_t g = 0; g < groups.size(); ++g) {
    std::map<std::string, int64_t> rows;
    staged.Advance(static_cast<int>(g), [&](const std::string& name, const at::Tensor& x) { rows[name] += x.size(0); });
    // Each of the group's linears saw every token, and no other linear did.
    ASSERT_EQ(rows.size(), groups[g].linears.size()) << groups[g].name;
    for (int j : groups[g].linears) EXPECT_EQ(rows[names[j]], 5 * 16) << names[j];
    // "Quantize" the group: its weights change in place after its inputs
    // were gathered, as the pipeline copies the quantized ones in.
    for (int j : groups[g].linears) layer_.linears[j].weight.mul_(0.5);
  }
  const at::Tensor out = staged.Finish();
  // Every linear ran with its final weights: a forward with them, batch by batch.
  EXPECT_TRUE(at::equal(out, ForwardBatched(*model_, layer_, hidden_, 2)));
}

TEST_F(StagedForwardTest, FewerStagedBatchesThanTheStreamHoldsOnlyTheirWindows) {
  StagedLayerForward staged(*model_, &layer_, hidden_, 2, 1, groups());
  EXPECT_EQ(staged.windows(), 2);
  for (size_t g = 0; g < model_->SequentialGroups().size(); ++g) staged.Advance(static_cast<int>(g), nullptr);
  EXPECT_TRUE(at::equal(staged.Finish(), ForwardBatched(*model_, layer_, hidden_.narrow(0, 0, 2), 2)));
}

TEST_F(StagedForwardTest, ADestroyedStagedForwardUnwindsItsParkedBatches) {
  // Parked in v_proj's hook after gathering q/k/v (group 0); destroyed
  // without Finish, as when quantizing a group fails: returns, nothing hangs.
  auto staged = std::make_unique<StagedLayerForward>(*model_, &layer_, hidden_, 1, 5, groups());
  int calls = 0;
  staged->Advance(0, [&](const std::string&, const at::Tensor&) { ++calls; });
  EXPECT_EQ(calls, 3 * 5);  // q, k, v of 5 batches
  staged.reset();
  // Never started: destroyed at once.
  StagedLayerForward idle(*model_, &layer_, hidden_, 1, 5, groups());
}

TEST_F(StagedForwardTest, ErrorsInAForwardComeBackFromAdvance) {
  StagedLayerForward staged(*model_, &layer_, hidden_, 2, 3, groups());
  EXPECT_THROW(staged.Advance(0,
                              [&](const std::string& name, const at::Tensor&) {
                                if (name == "self_attn.k_proj") throw std::runtime_error("hook failed");
                              }),
               std::runtime_error);
}

TEST_F(StagedForwardTest, GroupsOutOfTheForwardsOrderAreAnError) {
  // down_proj as the first group: the forward meets q_proj (group 1) first.
  // Had it gone on, down_proj's weights would not have been final when the
  // staged forward applied them.
  const std::vector<LinearGroup> reversed = {{"down", {6}}, {"rest", {0, 1, 2, 3, 4, 5}}};
  ASSERT_EQ(model_->LinearNames()[6], "mlp.down_proj");
  StagedLayerForward staged(*model_, &layer_, hidden_, 2, 3, reversed);
  EXPECT_THROW(staged.Advance(0, nullptr), std::logic_error);
}

TEST_F(StagedForwardTest, AdvanceAndFinishComeInGroupOrder) {
  StagedLayerForward staged(*model_, &layer_, hidden_, 2, 3, groups());
  EXPECT_THROW(staged.Advance(1, nullptr), std::logic_error);  // group 0 first
  staged.Advance(0, nullptr);
  EXPECT_THROW(staged.Finish(), std::logic_error);  // the later groups' linears are not quantized yet
  EXPECT_THROW(staged.Advance(2, nullptr), std::logic_error);
}

}  // namespace
}  // namespace qaas::quant
